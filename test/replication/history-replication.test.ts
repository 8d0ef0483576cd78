import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { and, asc, eq, inArray, sql } from "drizzle-orm";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowExecutionStatus } from "../../src/gen/tern/common/v1/common_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { parseHistogram } from "../../bench/lib/prom-histogram";
import { createReplicationCleanup } from "../../replication/cleanup";
import { shardFor } from "../../src/history/shard";
import { executions, historyEvents, replicationTasks, requestIds, timerTasks } from "../../src/persistence/schema";
import { eventually } from "../support/eventually";
import { json } from "../support/payload";
import { rejects } from "../support/rejects";
import { newDataLocation, startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr, connectBothWays, expectSameHistories, globalNamespace } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";
const hour = create(DurationSchema, { seconds: 3600n });

for (const store of await testStores()) {
  describe(`history replication on ${store} (clusterA 4 shards -> clusterB 8 shards)`, () => {
    let a: TestCluster, b: TestCluster;
    let bData: Awaited<ReturnType<typeof newDataLocation>>;
    let nsId: string;
    const startB = () => startTestCluster({ store, name: "clusterB", initialFailoverVersion: 2, shards: 8, dataLocation: bData.location });
    const run = (workflowId: string) => ({ workflowId, runId: "" });

    beforeAll(async () => {
      bData = await newDataLocation(store);
      [a, b] = await Promise.all([startTestCluster({ store, name: "clusterA", initialFailoverVersion: 1, shards: 4 }), startB()]);
      await connectBothWays(a, b);
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(async () => {
      await Promise.all([a.destroy(), b.destroy()]);
      await bData.remove();
    });

    test("StartAndSignalReplicate: B holds A's histories and serves reads of them", async () => {
      const wf = a.client(WorkflowService);
      const ids = Array.from({ length: 12 }, (_, i) => `order-${i}`);
      for (const [i, workflowId] of ids.entries()) {
        await wf.startWorkflowExecution({
          namespace: NS, workflowId, workflowType: "Order", taskQueue: "q", input: json({ i }), requestId: `start-${i}`,
          workflowExecutionTimeout: i % 2 ? hour : undefined,
        });
        await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: run(workflowId), signalName: "pay", input: json(i), requestId: `pay-${i}` });
      }
      await wf.completeWorkflowExecution({ namespace: NS, workflowExecution: run("order-0"), result: json("done") });
      await wf.requestCancelWorkflowExecution({ namespace: NS, workflowExecution: run("order-1"), reason: "changed mind", requestId: "cancel-1" });
      await wf.terminateWorkflowExecution({ namespace: NS, workflowExecution: run("order-3"), reason: "stop" });

      expect(await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 })).toBe(12 * 2 + 3);

      const bw = b.client(WorkflowService);
      const d = await bw.describeWorkflowExecution({ namespace: NS, execution: run("order-1") });
      expect(d.workflowExecutionInfo!.cancelRequested).toBe(true);
      expect(d.workflowExecutionInfo!.historyLength).toBe(3n);
      expect(d.shardId).toBe(shardFor(nsId, "order-1", 8));
      const closed = await bw.describeWorkflowExecution({ namespace: NS, execution: run("order-0") });
      expect(closed.workflowExecutionInfo!.status).toBe(WorkflowExecutionStatus.COMPLETED);
      const h = await bw.getWorkflowExecutionHistory({ namespace: NS, execution: run("order-5") });
      expect(h.history!.events.map((e) => [e.eventId, e.version])).toEqual([[1n, 1n], [2n, 1n]]);
      expect((await bw.listWorkflowExecutions({ namespace: NS, pageSize: 100 })).executions).toHaveLength(12);

      // A client retry after a failover stays idempotent; the new active fires the timeouts.
      const rows = async (x: TestCluster) => ({
        ids: (await x.server.database.db.select().from(requestIds).where(eq(requestIds.namespaceId, nsId)).orderBy(asc(requestIds.requestId)))
          .map(({ createdAt: _c, ...r }) => r),
        timers: (await x.server.database.db.select().from(timerTasks).where(eq(timerTasks.namespaceId, nsId)).orderBy(asc(timerTasks.workflowId)))
          .map(({ id: _i, shardId: _s, ...t }) => t),
      });
      const [onA, onB] = await Promise.all([rows(a), rows(b)]);
      expect(onB).toEqual(onA);
      expect(onB.timers.map((t) => t.workflowId)).toEqual(["order-1", "order-11", "order-5", "order-7", "order-9"]);

      // The passive copy is not re-replicated, and B refuses writes to A's namespace.
      expect(await b.server.database.db.select().from(replicationTasks)).toEqual([]);
      await rejects(bw.signalWorkflowExecution({ namespace: NS, workflowExecution: run("order-5"), signalName: "x" }), Code.FailedPrecondition, "clusterA");
    });

    test("ReplicationStatusLagGoesToZero: both sides report caught-up positions", async () => {
      await eventually(async () => {
        const onB = (await b.client(AdminService).getReplicationStatus({})).remotes.find((r) => r.clusterName === "clusterA")!;
        expect(onB.connectionState).toBe("connected");
        expect(onB.inbound.map((s) => s.shardId)).toEqual([1, 2, 3, 4]);
        expect(onB.inbound.map((s) => [s.lagTasks, s.lagMs])).toEqual(Array(4).fill([0n, 0n]));
        expect(onB.inbound.reduce((n, s) => n + s.ackedTaskId, 0n)).toBeGreaterThan(0n);
        const onA = (await a.client(AdminService).getReplicationStatus({})).remotes.find((r) => r.clusterName === "clusterB")!;
        expect(onA.outbound.map((s) => s.lagTasks)).toEqual(Array(4).fill(0n));
        expect(onA.inbound).toHaveLength(8);
      }, { timeout: 15_000 });
      expect(a.server.metrics.render()).toContain("replication_tasks_lag");
      expect(b.server.metrics.render()).toMatch(/replication_tasks_applied\{remote_cluster="clusterA"\} [1-9]/);
    });

    test("LatencySplitsIntoFetchAndApply: every applied task's lag is its time to arrive here plus its time to apply", () => {
      const text = b.server.metrics.render();
      const [lag, fetched, applied] = ["replication_latency", "replication_fetch_latency", "replication_apply_latency"].map((name) =>
        parseHistogram(text, name, { remote_cluster: "clusterA" }),
      );
      expect(lag!.count).toBeGreaterThan(0);
      expect(fetched!.count).toBe(lag!.count);
      expect(applied!.count).toBe(lag!.count);
      // The lag is taken inside the apply, the split just after it: the parts add up to a bit
      // more (or the same, in whole milliseconds; the sums differ by rounding then).
      const parts = fetched!.sum + applied!.sum;
      expect(parts).toBeGreaterThanOrEqual(lag!.sum - 1e-9);
      expect(parts - lag!.sum).toBeLessThan(0.05 * lag!.count);
    });

    test("DisabledConnectionCatchesUp: B resumes from its position and repairs gaps through raw history", async () => {
      const wf = a.client(WorkflowService);
      const op = b.client(OperatorService);
      await wf.startWorkflowExecution({ namespace: NS, workflowId: "gap-1", workflowType: "Order", taskQueue: "q" });
      await eventually(() => expectSameHistories(a, b, nsId));
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: false });
      expect((await op.describeCluster({ clusterName: "clusterA" })).cluster!.connectionState).toBe("disabled");

      for (const s of ["s1", "s2", "s3"]) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: run("gap-1"), signalName: s });
      await wf.startWorkflowExecution({ namespace: NS, workflowId: "gap-2", workflowType: "Order", taskQueue: "q", workflowExecutionTimeout: hour });
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: run("gap-2"), signalName: "s1" });
      // Lost tasks: gap-1's second signal (event 3) and gap-2's start (no local run yet on B).
      const t = replicationTasks;
      await a.server.database.db.delete(t).where(and(eq(t.namespaceId, nsId), eq(t.workflowId, "gap-1"), eq(t.firstEventId, 3)));
      await a.server.database.db.delete(t).where(and(eq(t.namespaceId, nsId), eq(t.workflowId, "gap-2"), eq(t.firstEventId, 1)));

      const lagOnA = async () =>
        (await a.client(AdminService).getReplicationStatus({})).remotes.find((r) => r.clusterName === "clusterB")!.outbound.reduce((n, s) => n + s.lagTasks, 0n);
      expect(await lagOnA()).toBeGreaterThan(0n);
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: true });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      await eventually(async () => expect(await lagOnA()).toBe(0n));
      const [timer] = await b.server.database.db.select().from(timerTasks).where(eq(timerTasks.workflowId, "gap-2"));
      expect(timer?.kind).toBe("WORKFLOW_TIMEOUT");
    });

    test("SenderRefusesAnUnknownOrDisabledPeer: a disabled connection stops serving pulls at the source too", async () => {
      const admin = a.client(AdminService);
      const pull = (clusterName: string, shardId = 1) => admin.getReplicationTasks({ shardId, afterTaskId: 0n, pageSize: 10, includeEvents: true, clusterName, waitTimeoutMs: 0 });
      await rejects(pull("clusterZ"), Code.FailedPrecondition, "cluster clusterZ is not connected to clusterA");
      const op = a.client(OperatorService);
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: false });
      try {
        await rejects(pull("clusterB"), Code.FailedPrecondition, "replication with cluster clusterB is disabled on clusterA");
      } finally {
        await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: true });
      }
      // Served again: the earlier tests' runs are on some of clusterA's 4 shards (which, the random namespace id decides).
      const pages = await Promise.all([1, 2, 3, 4].map((shard) => pull("clusterB", shard)));
      expect(pages.filter((page) => page.maxTaskId > 0n && page.tasks.length > 0).length).toBeGreaterThan(0);
    });

    test("CaughtUpLongPollWakesOnCommit: a poll past every task waits, and a commit on its shard answers it at once", async () => {
      // A source of its own whose sender re-reads a caught-up shard once a minute, past the poll's
      // 15 s wait: the task comes within the wait by the commit's wake alone. (clusterA re-reads
      // each second: an answer within 500 ms of the signal's could be either, and the wake, on a
      // loaded host, may take longer.) The signal commits once the poll has reached it.
      let reachedC = () => {};
      const polled = new Promise<void>((r) => (reachedC = r));
      let armed = false;
      const c = await startTestCluster({
        store, name: "clusterC", initialFailoverVersion: 3, shards: 4,
        serverOptions: {
          replication: { senderRecheckMs: 60_000, beforeShardPage: async () => void (armed && reachedC()) },
          beforeCommit: (operation) => (operation === "SignalWorkflowExecution" ? polled : undefined),
        },
      });
      try {
        await c.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
        const wf = c.client(WorkflowService);
        await wf.registerNamespace({ namespace: "polled", isGlobalNamespace: true, clusters: ["clusterC", "clusterB"] });
        const id = (await wf.describeNamespace({ namespace: "polled" })).namespace!.namespaceInfo!.id;
        await wf.startWorkflowExecution({ namespace: "polled", workflowId: "poll-1", workflowType: "Order", taskQueue: "q" });
        const shardId = shardFor(id, "poll-1", 4);
        const admin = c.client(AdminService);
        const pull = (after: bigint, waitTimeoutMs: number) =>
          admin.getReplicationTasks({ shardId, afterTaskId: after, pageSize: 10, includeEvents: true, clusterName: "clusterB", waitTimeoutMs });
        const { maxTaskId } = await pull(0n, 0);
        armed = true;
        const sent = performance.now();
        const waiting = pull(maxTaskId, 15_000).then((page) => ({ page, at: performance.now() }));
        await wf.signalWorkflowExecution({ namespace: "polled", workflowExecution: run("poll-1"), signalName: "wake" });
        const { page, at } = await waiting;
        expect(page.tasks.map((t) => [t.workflowId, Number(t.firstEventId)])).toEqual([["poll-1", 2]]);
        // Well within the wait (it would have answered empty at its end).
        expect(at - sent).toBeLessThan(7_500);
      } finally {
        await c.destroy();
      }
    });

    test("PassiveRestartResumes: B stopped mid-stream comes back with no gap and no duplicate", async () => {
      const wf = a.client(WorkflowService);
      const ids = ["r-0", "r-1", "r-2", "r-3"];
      for (const workflowId of ids) await wf.startWorkflowExecution({ namespace: NS, workflowId, workflowType: "Order", taskQueue: "q" });
      let done = 0;
      const writes = (async () => {
        for (let i = 0; i < 40; i++, done++) {
          await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: run(ids[i % 4]!), signalName: `s${i}` });
        }
      })();
      await eventually(() => expect(done).toBeGreaterThanOrEqual(10));
      await b.stop();
      await eventually(() => expect(done).toBeGreaterThanOrEqual(25));
      b = await startB();
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      await writes;
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      const ev = await b.server.database.db.select().from(executions).where(and(eq(executions.namespaceId, nsId), inArray(executions.workflowId, ids)));
      expect(ev.map((e) => e.nextEventId).sort()).toEqual([12, 12, 12, 12]);
      expect(b.server.metrics.render()).not.toMatch(/replication_tasks_failed\{[^}]*\} [1-9]/);
    });

    test("AckedTasksAreCleanedUp: the source keeps only what a connected remote has not acked", async () => {
      const cleanup = createReplicationCleanup({ db: a.server.database.db, log: a.server.log });
      const left = () => a.server.database.db.$count(replicationTasks);
      await eventually(async () => {
        await cleanup.runOnce();
        expect(await left()).toBe(0);
      });
      const op = b.client(OperatorService);
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: false });
      await a.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: run("r-0"), signalName: "held" });
      await cleanup.runOnce();
      expect(await left()).toBe(1);
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: true });
      await eventually(async () => {
        await cleanup.runOnce();
        expect(await left()).toBe(0);
      });
      await expectSameHistories(a, b, nsId);
    });

    test("DivergentLowerBranchIsKeptAside: B keeps its higher-version branch current and A's as a branch, without stalling", async () => {
      const wf = a.client(WorkflowService);
      await wf.startWorkflowExecution({ namespace: NS, workflowId: "div-1", workflowType: "Order", taskQueue: "q" });
      await eventually(() => expectSameHistories(a, b, nsId));
      // B's copy as if B had written event 1 at its own version (a forced failover): as every
      // write of a run does, this one moves its db_version on.
      const db = b.server.database.db;
      await db.update(historyEvents).set({ version: 2 }).where(and(eq(historyEvents.namespaceId, nsId), eq(historyEvents.workflowId, "div-1")));
      await db.update(executions).set({ versionHistory: [{ eventId: 1, version: 2 }], lastWriteVersion: 2, dbVersion: sql`${executions.dbVersion} + 1` })
        .where(and(eq(executions.namespaceId, nsId), eq(executions.workflowId, "div-1")));
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: run("div-1"), signalName: "late" });
      await wf.startWorkflowExecution({ namespace: NS, workflowId: "div-after", workflowType: "Order", taskQueue: "q" });
      // The stream goes on past the divergent run; B keeps its branch (version 2 > 1) current.
      const branches = await eventually(async () => {
        const res = await b.client(AdminService).listHistoryBranches({ namespace: NS, workflowId: "div-1" });
        expect(res.branches).toHaveLength(2);
        return res.branches;
      });
      expect(branches.map((br) => br.events.map((e) => `${e.eventId}@${e.version}`))).toEqual([["1@2"], ["1@1", "2@1"]]);
      expect(branches[1]!.forkEventId).toBe(0n);
      await eventually(async () => {
        const [copy] = await db.select().from(executions).where(and(eq(executions.namespaceId, nsId), eq(executions.workflowId, "div-after")));
        expect(copy?.nextEventId).toBe(2);
      });
    });
  });
}
