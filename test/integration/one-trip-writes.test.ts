import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { and, asc, eq, sql } from "drizzle-orm";
import { WorkflowIdReusePolicy } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { lockNamespaceBarrier } from "../../src/history/namespace-guard";
import { executions, historyEvents, namespaces, timerTasks } from "../../src/persistence/schema";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "t", taskQueue: "q" };

// A signal to a run this process wrote last goes out in one round trip, from the run's row as
// that write left it (src/history/recent-rows.ts); guards in SQL roll it back when the row or the
// namespace moved on, and the write is made again from a fresh read.
for (const store of await testStores()) {
  describe(`client writes in one round trip on ${store}`, () => {
    let cluster: TestCluster;
    let wf: ReturnType<typeof cluster.client<typeof WorkflowService>>;
    let nsId: string;
    const db = () => cluster.server.database.db;
    const counter = (name: string, labels: string) =>
      Number(cluster.server.metrics.render().match(new RegExp(`${name}\\{${labels}\\} (\\d+)`))?.[1] ?? 0);
    const appends = (path: string, operation = "SignalWorkflowExecution") => counter("history_writes", `operation="${operation}",path="${path}"`);
    const signal = (workflowId: string, requestId?: string) =>
      wf.signalWorkflowExecution({ namespace: "g", workflowExecution: { workflowId }, signalName: "s", requestId });
    const eventIds = async (workflowId: string) =>
      (await db().select().from(historyEvents).where(eq(historyEvents.workflowId, workflowId)).orderBy(asc(historyEvents.eventId))).map((e) => e.eventId);
    const row = async (workflowId: string) => (await db().select().from(executions).where(eq(executions.workflowId, workflowId)))[0]!;
    /** Another process's write of the run (of the same state): as every write of a run does, it moves db_version on. */
    const writtenElsewhere = (workflowId: string, set: Partial<typeof executions.$inferInsert> = {}) =>
      db().update(executions).set({ ...set, dbVersion: sql`${executions.dbVersion} + 1` }).where(eq(executions.workflowId, workflowId));

    beforeAll(async () => {
      cluster = await startTestCluster({ store });
      wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: "g", isGlobalNamespace: true });
      nsId = (await db().select().from(namespaces).where(eq(namespaces.name, "g")))[0]!.id;
    });
    afterAll(() => cluster.destroy());

    test("TestSignalsToARunThisProcessWroteGoInOneTrip", async () => {
      await wf.startWorkflowExecution({ namespace: "g", workflowId: "w1", ...T });
      const before = appends("one-trip");
      for (const id of ["a", "b", "c"]) await signal("w1", id);
      expect(appends("one-trip")).toBe(before + 3);
      expect(await eventIds("w1")).toEqual([1, 2, 3, 4]);
      expect([(await row("w1")).nextEventId, (await row("w1")).dbVersion]).toEqual([5, 4]);
      // Addressed by its run id too; another run id is read first (and not found).
      const { runId } = await row("w1");
      await wf.signalWorkflowExecution({ namespace: "g", workflowExecution: { workflowId: "w1", runId }, signalName: "s" });
      expect(appends("one-trip")).toBe(before + 4);
      await rejects(wf.signalWorkflowExecution({ namespace: "g", workflowExecution: { workflowId: "w1", runId: "other" }, signalName: "s" }), Code.NotFound, "run other");
      expect(await eventIds("w1")).toEqual([1, 2, 3, 4, 5]);
    });

    test("TestARunWrittenElsewhereIsReadAgain", async () => {
      await wf.startWorkflowExecution({ namespace: "g", workflowId: "w2", ...T });
      await signal("w2");
      await writtenElsewhere("w2");
      const [oneTrip, readFirst] = [appends("one-trip"), appends("read-first")];
      const res = await signal("w2");
      expect([appends("one-trip"), appends("read-first")]).toEqual([oneTrip, readFirst + 1]);
      expect(Number(res.eventId)).toBe(3);
      expect(await eventIds("w2")).toEqual([1, 2, 3]);
      await signal("w2");
      expect(appends("one-trip")).toBe(oneTrip + 1);
    });

    test("TestARunOfALocalNamespaceWrittenElsewhereIsReadAgain", async () => {
      // No namespace check and no replication task: the state's db_version alone stops the write.
      await wf.registerNamespace({ namespace: "local" });
      const local = (workflowId: string) => wf.signalWorkflowExecution({ namespace: "local", workflowExecution: { workflowId }, signalName: "s" });
      await wf.startWorkflowExecution({ namespace: "local", workflowId: "l2", ...T });
      await local("l2");
      await writtenElsewhere("l2");
      const [oneTrip, readFirst] = [appends("one-trip"), appends("read-first")];
      expect(Number((await local("l2")).eventId)).toBe(3);
      expect([appends("one-trip"), appends("read-first")]).toEqual([oneTrip, readFirst + 1]);
      expect(await eventIds("l2")).toEqual([1, 2, 3]);
      expect(Number((await local("l2")).eventId)).toBe(4);
      expect(appends("one-trip")).toBe(oneTrip + 1);
    });

    test("TestARunClosedElsewhereRefusesTheSignal", async () => {
      await wf.startWorkflowExecution({ namespace: "g", workflowId: "w3", ...T });
      await signal("w3");
      await writtenElsewhere("w3", { status: "COMPLETED", closeTime: new Date() });
      await rejects(signal("w3"), Code.FailedPrecondition, "already closed");
      expect(await eventIds("w3")).toEqual([1, 2]);
    });

    test("TestARetriedSignalAnswersWithTheFirst", async () => {
      await wf.startWorkflowExecution({ namespace: "g", workflowId: "w4", ...T });
      const first = await signal("w4", "once");
      const again = await signal("w4", "once");
      expect(Number(again.eventId)).toBe(Number(first.eventId));
      expect(await eventIds("w4")).toEqual([1, 2]);
    });

    test("TestARunClosedInOneTripTakesNoMoreSignals", async () => {
      await wf.startWorkflowExecution({ namespace: "g", workflowId: "w6", ...T, workflowExecutionTimeout: durationFromMs(3_600_000) });
      const timers = async () => (await db().select().from(timerTasks).where(eq(timerTasks.workflowId, "w6"))).length;
      expect(await timers()).toBe(1);
      const before = appends("one-trip", "TerminateWorkflowExecution");
      await wf.terminateWorkflowExecution({ namespace: "g", workflowExecution: { workflowId: "w6" }, reason: "done" });
      expect(appends("one-trip", "TerminateWorkflowExecution")).toBe(before + 1);
      expect((await row("w6")).status).toBe("TERMINATED");
      // Its timeout timer went in the same statement.
      expect(await timers()).toBe(0);
      await rejects(signal("w6"), Code.FailedPrecondition, "already closed");
      expect(await eventIds("w6")).toEqual([1, 2]);
    });

    test("TestACancelRequestMadeAgainIsCountedOnce", async () => {
      await wf.startWorkflowExecution({ namespace: "g", workflowId: "w7", ...T });
      await signal("w7");
      await writtenElsewhere("w7");
      const [cancels, readFirst] = [counter("workflow_cancel", 'namespace="g"'), appends("read-first", "RequestCancelWorkflowExecution")];
      await wf.requestCancelWorkflowExecution({ namespace: "g", workflowExecution: { workflowId: "w7" }, reason: "r" });
      expect(appends("read-first", "RequestCancelWorkflowExecution")).toBe(readFirst + 1);
      expect(counter("workflow_cancel", 'namespace="g"')).toBe(cancels + 1);
      expect((await row("w7")).cancelRequested).toBe(true);
    });
    test("TestAStartOfANewIdGoesInOneTrip", async () => {
      const before = appends("one-trip", "CreateWorkflowExecution");
      const { runId } = await wf.startWorkflowExecution({ namespace: "g", workflowId: "w8", ...T, requestId: "s8" });
      expect(appends("one-trip", "CreateWorkflowExecution")).toBe(before + 1);
      expect([(await row("w8")).runId, await eventIds("w8")]).toEqual([runId, [1]]);
      // The started run takes its signals in one trip.
      const signals = appends("one-trip");
      await signal("w8");
      expect(appends("one-trip")).toBe(signals + 1);
      // Retried, the start answers with the first run.
      const again = await wf.startWorkflowExecution({ namespace: "g", workflowId: "w8", ...T, requestId: "s8" });
      expect([again.runId, again.started]).toEqual([runId, false]);
    });

    test("TestAStartOfAnIdWithARunWrittenElsewhereIsReadFirst", async () => {
      // Runs this process never wrote (another process's): one closed, one open.
      const other = (workflowId: string, status: string) => db().insert(executions).values({
        namespaceId: nsId, workflowId, runId: `${workflowId}-elsewhere`, shardId: 1, workflowType: "t", taskQueue: "q", status,
        startTime: new Date(), nextEventId: 2, lastWriteVersion: 1, versionHistory: [{ eventId: 1, version: 1 }],
      });
      await other("w9", "COMPLETED");
      await other("w10", "RUNNING");
      const before = appends("one-trip", "CreateWorkflowExecution");
      await rejects(wf.startWorkflowExecution({ namespace: "g", workflowId: "w9", ...T, workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE }), Code.AlreadyExists, "reject-duplicate");
      await rejects(wf.startWorkflowExecution({ namespace: "g", workflowId: "w10", ...T }), Code.AlreadyExists, "already running");
      expect(appends("one-trip", "CreateWorkflowExecution")).toBe(before);
      expect((await db().select().from(executions).where(eq(executions.workflowId, "w9"))).map((r) => r.runId)).toEqual(["w9-elsewhere"]);
      // Allowed by its policy, the id's new run names the one before it.
      const { runId } = await wf.startWorkflowExecution({ namespace: "g", workflowId: "w9", ...T });
      const [started] = await db().select().from(historyEvents).where(and(eq(historyEvents.runId, runId), eq(historyEvents.eventId, 1)));
      expect(JSON.stringify(started!.attributes)).toContain('"w9-elsewhere"');
    });

    test("TestSignalWithStartGoesInOneTripAndStartsAfterARunClosedElsewhere", async () => {
      const sws = (requestId?: string) => wf.signalWithStartWorkflowExecution({ namespace: "g", workflowId: "w14", ...T, signalName: "s", requestId });
      const before = appends("one-trip", "SignalWithStartWorkflowExecution");
      const first = await sws();
      const second = await sws("again");
      expect([first.started, second.started, second.runId]).toEqual([true, false, first.runId]);
      expect(appends("one-trip", "SignalWithStartWorkflowExecution")).toBe(before + 2);
      expect(await eventIds("w14")).toEqual([1, 2, 3]);
      // Retried, the signal answers with the first.
      expect((await sws("again")).runId).toBe(first.runId);
      expect(await eventIds("w14")).toEqual([1, 2, 3]);
      // Closed by another process, the run this process kept open is not signalled: a new run starts.
      await writtenElsewhere("w14", { status: "COMPLETED", closeTime: new Date() });
      const third = await sws();
      expect(third.started).toBe(true);
      expect(third.runId).not.toBe(first.runId);
      expect(await eventIds("w14")).toEqual([1, 1, 2, 2, 3]); // both runs, by event id
    });

    test("TestANamespaceFailedOverElsewhereRefusesAStart", async () => {
      await wf.registerNamespace({ namespace: "g2", isGlobalNamespace: true });
      await wf.startWorkflowExecution({ namespace: "g2", workflowId: "w12", ...T });
      // Another process failed the namespace over to another cluster: this process's copy of it is stale.
      await db().update(namespaces).set({ activeClusterName: "elsewhere", failoverVersion: sql`${namespaces.failoverVersion} + 100` }).where(eq(namespaces.name, "g2"));
      await rejects(wf.startWorkflowExecution({ namespace: "g2", workflowId: "w13", ...T }), Code.FailedPrecondition, "elsewhere");
      expect(await db().select().from(executions).where(eq(executions.workflowId, "w13"))).toEqual([]);
    });

    // A failover holds the namespace's barrier lock exclusively while it changes the namespace:
    // a write in one statement waits for it, and its check must then see the change, though the
    // statement's snapshot is from before (the check is a query of its own, after the lock).
    test.skipIf(store !== "postgres")("TestAOneStatementWriteWaitingOnTheBarrierSeesTheFailover", async () => {
      await wf.registerNamespace({ namespace: "g3", isGlobalNamespace: true });
      await wf.startWorkflowExecution({ namespace: "g3", workflowId: "w15", ...T });
      await wf.signalWorkflowExecution({ namespace: "g3", workflowExecution: { workflowId: "w15" }, signalName: "s" });
      const id = (await db().select().from(namespaces).where(eq(namespaces.name, "g3")))[0]!.id;
      const waiting = async () => (await db().execute(sql`select count(*)::int as n from pg_locks where locktype = 'advisory' and not granted`)) as unknown as { n: number }[];
      const before = appends("one-trip");
      let signalled!: Promise<unknown>;
      await db().transaction(async (tx) => {
        await lockNamespaceBarrier(tx, id);
        await tx.update(namespaces).set({ activeClusterName: "elsewhere", failoverVersion: sql`${namespaces.failoverVersion} + 100` }).where(eq(namespaces.id, id));
        signalled = wf.signalWorkflowExecution({ namespace: "g3", workflowExecution: { workflowId: "w15" }, signalName: "s" });
        signalled.catch(() => {});
        await eventually(async () => expect((await waiting())[0]!.n).toBe(1));
        // The waiting write took the barrier first: it holds no lock on the run's row yet.
        await tx.execute(sql`select 1 from ${executions} where ${executions.workflowId} = 'w15' for update nowait`);
      });
      await rejects(signalled, Code.FailedPrecondition, "elsewhere");
      expect(appends("one-trip")).toBe(before);
      expect(await eventIds("w15")).toEqual([1, 2]);
    });

    // Last: it leaves the namespace active elsewhere.
    test("TestANamespaceFailedOverElsewhereRefusesTheSignal", async () => {
      await wf.startWorkflowExecution({ namespace: "g", workflowId: "w5", ...T });
      await signal("w5");
      // Another process failed the namespace over to another cluster: this process's copy of it is stale.
      await db().update(namespaces).set({ activeClusterName: "elsewhere", failoverVersion: sql`${namespaces.failoverVersion} + 100` }).where(eq(namespaces.id, nsId));
      await rejects(signal("w5"), Code.FailedPrecondition, "elsewhere");
      expect(await eventIds("w5")).toEqual([1, 2]);
      expect((await row("w5")).nextEventId).toBe(3);
    });

  });
}
