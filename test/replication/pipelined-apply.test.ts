import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { and, asc, eq, sql } from "drizzle-orm";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { pgErrorOf } from "../../src/errors";
import { lockRunKey } from "../../src/history/branch-store";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { executions, historyEvents, replicationAckLevels, replicationDlq, requestIds, timerTasks } from "../../src/persistence/schema";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr, connectBothWays, expectSameHistories, globalNamespace } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";
const hour = create(DurationSchema, { seconds: 3600n });
const pages = (x: TestCluster, path: string) =>
  Number(x.server.metrics.render().match(new RegExp(`replication_pages_applied\\{[^}]*path="${path}"[^}]*\\} (\\d+)`))?.[1] ?? 0);

for (const store of await testStores()) {
  describe(`pipelined apply on ${store} (one shard each way)`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    const wf = () => a.client(WorkflowService);
    const run = (workflowId: string) => ({ workflowId, runId: "" });
    const ackRow = and(
      eq(replicationAckLevels.remoteCluster, "clusterA"), eq(replicationAckLevels.direction, "inbound"),
      eq(replicationAckLevels.queue, "history"), eq(replicationAckLevels.shardId, 1),
    );
    const inboundAck = async () => (await b.server.database.db.select().from(replicationAckLevels).where(ackRow))[0]?.ackLevel ?? 0;
    const eventsOnB = async (workflowId: string) =>
      (await b.server.database.db.select().from(historyEvents).where(and(eq(historyEvents.namespaceId, nsId), eq(historyEvents.workflowId, workflowId))).orderBy(asc(historyEvents.eventId)))
        .map((e) => e.eventType);
    const runRow = async (x: TestCluster, workflowId: string) =>
      (await x.server.database.db.select().from(executions).where(and(eq(executions.namespaceId, nsId), eq(executions.workflowId, workflowId))))[0]!;
    const signalAndWait = async (workflowId: string) => {
      await wf().signalWorkflowExecution({ namespace: NS, workflowExecution: run(workflowId), signalName: "next" });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
    };

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{ shards: 1 }, { shards: 1 }]);
      await connectBothWays(a, b);
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("OrdinaryPagesApplyInTwoRoundTrips: starts, signals, closes and timers replicate without the full path", async () => {
      for (const id of ["p1", "p2", "p3"]) {
        await wf().startWorkflowExecution({ namespace: NS, workflowId: id, workflowType: "T", taskQueue: "q", workflowExecutionTimeout: id === "p3" ? undefined : hour });
        await wf().signalWorkflowExecution({ namespace: NS, workflowExecution: run(id), signalName: "go", requestId: `go-${id}` });
      }
      await wf().completeWorkflowExecution({ namespace: NS, workflowExecution: run("p1") });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      // p2's timeout timer is kept on the passive side too; p1 closed, so its timer is gone; p3 has none.
      const timers = async (x: TestCluster) => (await x.server.database.db.select().from(timerTasks).where(eq(timerTasks.namespaceId, nsId))).map((t) => [t.workflowId, t.fireAt.getTime()]);
      expect(await timers(b)).toEqual(await timers(a));
      expect((await timers(b)).map(([id]) => id)).toEqual(["p2"]);
      expect(pages(b, "pipelined")).toBeGreaterThan(0);
      expect(pages(b, "full")).toBe(0);
    });

    test("SteadyPagesApplyInOneTrip: a run this process applied takes its next pages in one round trip, from its row as the last commit left it", async () => {
      await wf().startWorkflowExecution({ namespace: NS, workflowId: "o1", workflowType: "T", taskQueue: "q" });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      const oneTrip = pages(b, "one-trip");
      for (let i = 0; i < 3; i++) await signalAndWait("o1");
      expect(pages(b, "one-trip")).toBe(oneTrip + 3);
      const [onA, onB] = [await runRow(a, "o1"), await runRow(b, "o1")];
      expect([onB.nextEventId, onB.versionHistory, onB.lastWriteVersion, onB.status]).toEqual([onA.nextEventId, onA.versionHistory, onA.lastWriteVersion, onA.status]);
      expect(onB.nextEventId).toBe(5);
      // A new run starts in one trip too (nothing to read: its insert is the guard).
      await wf().startWorkflowExecution({ namespace: NS, workflowId: "o2", workflowType: "T", taskQueue: "q", workflowExecutionTimeout: hour });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      expect(pages(b, "one-trip")).toBe(oneTrip + 4);
      // With its timeout timer, in the same statement; and a close in one trip clears it.
      const timers = async (x: TestCluster) =>
        (await x.server.database.db.select().from(timerTasks).where(and(eq(timerTasks.namespaceId, nsId), eq(timerTasks.workflowId, "o2")))).map((t) => t.fireAt.getTime());
      expect(await timers(b)).toEqual(await timers(a));
      expect(await timers(b)).toHaveLength(1);
      await wf().completeWorkflowExecution({ namespace: NS, workflowExecution: run("o2") });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      expect(pages(b, "one-trip")).toBe(oneTrip + 5);
      expect(await timers(b)).toEqual([]);
      expect(pages(b, "full")).toBe(0);
    });

    // B's page transactions go on connections of the applier's own (database.ts): there each
    // apply text is planned about once, not once on each connection of the pool.
    test.skipIf(store !== "postgres")("TheApplierHasConnectionsOfItsOwn: pages apply on at most two of them; ended by PostgreSQL, they come back and the next pages apply", async () => {
      const applyBackends = async () =>
        ((await b.server.database.db.execute(sql`select pid from pg_stat_activity where datname = current_database() and application_name = 'tern-apply'`)) as unknown as { pid: number }[])
          .map((r) => r.pid);
      await wf().startWorkflowExecution({ namespace: NS, workflowId: "c1", workflowType: "T", taskQueue: "q" });
      await signalAndWait("c1");
      const before = await applyBackends();
      expect(before.length).toBeGreaterThanOrEqual(1);
      expect(before.length).toBeLessThanOrEqual(2);
      await b.server.database.db.execute(sql`select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and application_name = 'tern-apply'`);
      await eventually(async () => expect(await applyBackends()).toEqual([]), { timeout: 15_000 });
      for (let i = 0; i < 2; i++) await signalAndWait("c1");
      const after = await applyBackends();
      expect(after.length).toBeGreaterThanOrEqual(1);
      expect(after.some((pid) => before.includes(pid))).toBe(false);
      expect(await eventsOnB("c1")).toHaveLength(4);
    });

    test("AStaleCachedRunIsReadAgain: a run another writer changed since (its db_version moved) rolls the one trip back and applies from a fresh read", async () => {
      await wf().startWorkflowExecution({ namespace: NS, workflowId: "s1", workflowType: "T", taskQueue: "q" });
      await signalAndWait("s1");
      // Another writer's save of B's copy (of the same state): as every write of a run does, it moves db_version on.
      const before = await runRow(b, "s1");
      await b.server.database.db.update(executions).set({ dbVersion: sql`${executions.dbVersion} + 1` })
        .where(and(eq(executions.namespaceId, nsId), eq(executions.workflowId, "s1")));
      const [oneTrip, pipelined] = [pages(b, "one-trip"), pages(b, "pipelined")];
      await signalAndWait("s1");
      expect([pages(b, "one-trip"), pages(b, "pipelined")]).toEqual([oneTrip, pipelined + 1]);
      // Applied onto the row as it stands (expectSameHistories compared the states).
      expect((await runRow(b, "s1")).dbVersion).toBe(before.dbVersion + 2);
      await signalAndWait("s1");
      expect(pages(b, "one-trip")).toBe(oneTrip + 1);
    });

    test("ALostCommitIsAppliedAgain: a task the run cache calls a duplicate is read afresh, since PostgreSQL may have lost the commit the cache remembers", async () => {
      await wf().startWorkflowExecution({ namespace: NS, workflowId: "lost1", workflowType: "T", taskQueue: "q" });
      await signalAndWait("lost1");
      const db = b.server.database.db;
      const row = await runRow(b, "lost1");
      const ack = await inboundAck();
      await signalAndWait("lost1");
      expect(await eventsOnB("lost1")).toHaveLength(3);
      // What a crash leaves of an asynchronous commit it did not flush (B applies with
      // synchronous_commit off): the run's row, its third event and the shard's ack as before it.
      const ofRun = (t: typeof historyEvents | typeof requestIds) => and(eq(t.namespaceId, nsId), eq(t.workflowId, "lost1"), eq(t.eventId, 3));
      await db.delete(historyEvents).where(ofRun(historyEvents));
      await db.delete(requestIds).where(ofRun(requestIds));
      await db.update(executions).set(row).where(and(eq(executions.namespaceId, nsId), eq(executions.workflowId, "lost1")));
      await db.update(replicationAckLevels).set({ ackLevel: ack }).where(ackRow);
      // The stream starts again from the stored ack; the source sends the lost task again.
      const op = b.client(OperatorService);
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: false });
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: true });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      expect(await eventsOnB("lost1")).toHaveLength(3);
    });

    // Another applier of the run (a process on the same database, reading it afresh) holds its
    // key lock: a page applied in one statement waits for it before it writes.
    test.skipIf(store !== "postgres")("AOneTripApplyWaitsForTheRunsKeyLock: its one statement takes the lock after the ack's move and before its writes", async () => {
      await wf().startWorkflowExecution({ namespace: NS, workflowId: "k1", workflowType: "T", taskQueue: "q" });
      await signalAndWait("k1");
      const { runId } = await runRow(b, "k1");
      const waiting = async () =>
        ((await b.server.database.db.execute(sql`select count(*)::int as n from pg_locks where locktype = 'advisory' and not granted
          and database = (select oid from pg_database where datname = current_database())`)) as unknown as { n: number }[])[0]!.n;
      const oneTrip = pages(b, "one-trip");
      await b.server.database.db.transaction(async (tx) => {
        await lockRunKey(tx, { namespaceId: nsId, workflowId: "k1", runId });
        await wf().signalWorkflowExecution({ namespace: NS, workflowExecution: run("k1"), signalName: "held" });
        await eventually(async () => expect(await waiting()).toBe(1), { timeout: 15_000 });
        expect(await eventsOnB("k1")).toEqual(["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_SIGNALED"]);
        // It moved the shard's ack first, as the pipelined path does (one order among appliers, no cycle).
        const ackLocked = await b.server.database.db.execute(sql`select 1 from ${replicationAckLevels} where ${ackRow} for update nowait`)
          .then(() => false, (e) => pgErrorOf(e).code === "55P03");
        expect(ackLocked).toBe(true);
      });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      expect(await eventsOnB("k1")).toHaveLength(3);
      expect(pages(b, "one-trip")).toBe(oneTrip + 1);
    });

    test("APageWhoseAckMovedElsewhereWritesNothing: the ack check fails before COMMIT goes out", async () => {
      for (const id of ["m1", "m2", "m3"]) await wf().startWorkflowExecution({ namespace: NS, workflowId: id, workflowType: "T", taskQueue: "q" });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      const at = await inboundAck();
      // As if another process applied the shard's next two tasks: the stored ack moves on, not this process's position.
      await b.server.database.db.update(replicationAckLevels).set({ ackLevel: at + 2 }).where(ackRow);
      for (const id of ["m1", "m2", "m3"]) await wf().signalWorkflowExecution({ namespace: NS, workflowExecution: run(id), signalName: "late" });
      // The page from `at` is refused whole; the stream resumes from the stored ack and applies m3's signal only.
      await eventually(async () => expect(await eventsOnB("m3")).toEqual(["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_SIGNALED"]), { timeout: 15_000 });
      expect(await inboundAck()).toBe(at + 3);
      expect(await eventsOnB("m1")).toEqual(["WORKFLOW_EXECUTION_STARTED"]);
      expect(await eventsOnB("m2")).toEqual(["WORKFLOW_EXECUTION_STARTED"]);
    });

    // Last: it leaves B behind A on purpose (and the one before left m1 and m2 behind).
    test("AHeldRunIsNotAppliedInOneTrip: a run with a DLQ entry from the shard (put there by another process) sends its next task there too", async () => {
      await wf().startWorkflowExecution({ namespace: NS, workflowId: "h1", workflowType: "T", taskQueue: "q" });
      await wf().signalWorkflowExecution({ namespace: NS, workflowExecution: run("h1"), signalName: "next" });
      await eventually(async () => expect(await eventsOnB("h1")).toEqual(["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_SIGNALED"]), { timeout: 15_000 });
      const { runId } = await runRow(b, "h1");
      const db = b.server.database.db;
      await db.insert(replicationDlq).values({
        sourceCluster: "clusterA", shardId: 1, taskId: 1_000_000, namespaceId: nsId, workflowId: "h1", runId, firstEventId: 99, nextEventId: 100, version: 1, attempts: 1, lastError: "another process",
      });
      await wf().signalWorkflowExecution({ namespace: NS, workflowExecution: run("h1"), signalName: "held" });
      const held = async () => (await db.select().from(replicationDlq).where(eq(replicationDlq.workflowId, "h1"))).length;
      await eventually(async () => expect(await held()).toBe(2), { timeout: 15_000 });
      expect(await eventsOnB("h1")).toEqual(["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_SIGNALED"]);
    });
  });
}
