import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { eq } from "drizzle-orm";
import postgres from "postgres";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { ReplicationState } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { namespaces } from "../../src/persistence/schema";
import { ackGate, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { startTestCluster, type TestCluster } from "../support/server";
import { rejects } from "../support/rejects";
import { testStores } from "../support/stores";
import { addr, connectBothWays, expectSameHistories, globalNamespace } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

// PGlite is one process's database; PostgreSQL may serve several servers of one cluster.
for (const store of (await testStores()).filter((s) => s === "postgres")) {
  describe(`two servers of one cluster on one ${store} database`, () => {
    let a: TestCluster, a2: TestCluster, b: TestCluster;
    const acks = ackGate(); // B's acks to A, held where a failover must wait

    beforeAll(async () => {
      // clusterA's idle resets well beyond the tests, so only a HANDOVER seen brings one (handover-reset.ts).
      const idleResets = { serverOptions: { replication: { handoverResetIdleMs: 600_000 } } };
      [a, b] = await startClusters(store, [{ shards: 1, ...idleResets }, { shards: 1, ...acks.options }]);
      a2 = await startTestCluster({ store, name: "clusterA", initialFailoverVersion: 1, shards: 1, dataLocation: a.dataLocation, ...idleResets });
      await connectBothWays(a, b);
    });
    afterAll(async () => {
      acks.gate.open();
      await a2.stop();
      await Promise.all([a.destroy(), b.destroy()]);
    });

    test("AnIdleDatabaseIsNotScannedForAbandonedHandovers: with no namespace seen in HANDOVER, neither server runs the reset", async () => {
      // Each reset pass scans the namespaces table once; nothing else reads it while no call comes.
      // PostgreSQL publishes a backend's scans within a second while it works, but up to 10 s
      // after it went idle (PGSTAT_IDLE_INTERVAL), so the starts' own reads may land late: the
      // count must hold still for longer than that. Resets every 2 s (both servers) never let it.
      const sql = postgres(a.dataLocation, { max: 1, onnotice: () => {} });
      try {
        const scans = async () => {
          const [row] = await sql<{ n: string }[]>`select seq_scan + coalesce(idx_scan, 0) as n from pg_stat_user_tables where relname = 'namespaces'`;
          return Number(row!.n);
        };
        const heldFor = 12_000, limit = 45_000;
        const begun = performance.now();
        let last = await scans(), since = begun;
        while (performance.now() - since < heldFor) {
          if (performance.now() - begun > limit) throw new Error(`the namespaces table was still scanned (${last} scans) ${limit} ms into an idle window`);
          await Bun.sleep(500);
          const now = await scans();
          if (now !== last) [last, since] = [now, performance.now()];
        }
      } finally {
        await sql.end({ timeout: 1 });
      }
    });

    test("WritesThroughTheOtherServerReachThePeer: the server B pulls from is not told of those commits and still serves them", async () => {
      const nsId = await globalNamespace(a, b, "shared");
      // Interleaved: the server B pulls from knows only its own commits, with the others' ids between.
      const on = (i: number) => (i % 3 === 1 ? a2 : a).client(WorkflowService);
      for (let i = 0; i < 4; i++) await on(i).startWorkflowExecution({ namespace: "shared", workflowId: `x${i}`, workflowType: "T", taskQueue: "q" });
      for (let i = 0; i < 12; i++) await on(i).signalWorkflowExecution({ namespace: "shared", workflowExecution: { workflowId: `x${i % 4}` }, signalName: `s${i}` });
      await eventually(async () => expect(await expectSameHistories(a, b, nsId)).toBe(16), { timeout: 15_000 });
      // The last writes went through a2 alone: found by the re-read, not by a wake-up.
      for (let i = 0; i < 3; i++) await a2.client(WorkflowService).signalWorkflowExecution({ namespace: "shared", workflowExecution: { workflowId: "x1" }, signalName: `late${i}` });
      await eventually(async () => expect(await expectSameHistories(a, b, nsId)).toBe(19), { timeout: 15_000 });
    });

    test("ADisableThroughTheOtherServerEndsPagesFromMemoryWithinASecond: its commits are held there, not its connection row", async () => {
      const pull = (after: bigint) =>
        a.client(AdminService).getReplicationTasks({ shardId: 1, afterTaskId: after, clusterName: "clusterB", includeEvents: true, waitTimeoutMs: 0 });
      // B stops pulling, so that only this test asks a for clusterB's tasks.
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: false });
      let last = (await pull(0n)).maxTaskId;
      await a2.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: false });
      const disabled = performance.now();
      try {
        // Each round commits a task through a (its tail holds it) and asks a for it: sent from
        // memory until a's last database page that found clusterB enabled is a second old.
        // Timed by the last pull still served, as it was asked: not by the rounds' own pace.
        let servedAskedAt = disabled;
        await eventually(async () => {
          await a.client(WorkflowService).signalWorkflowExecution({ namespace: "shared", workflowExecution: { workflowId: "x0" }, signalName: "after-disable" });
          const asked = performance.now();
          const page = pull(last);
          page.then(() => (servedAskedAt = asked), () => {});
          last += 1n;
          await rejects(page, Code.FailedPrecondition, "replication with cluster clusterB is disabled on clusterA");
        }, { timeout: 10_000, interval: 50 });
        expect(servedAskedAt - disabled).toBeLessThan(3_000);
      } finally {
        await a2.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: true });
        await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: true });
      }
    });

    test("AHandoverOutlivesTheOtherServersRestart: a server starting on the database leaves a HANDOVER alone while another server's failover runs it", async () => {
      await globalNamespace(a, b, "handover");
      const state = async (x: TestCluster) => (await x.client(WorkflowService).describeNamespace({ namespace: "handover" })).namespace!.replicationConfig!.state;
      const start = (workflowId: string) => a.client(WorkflowService).startWorkflowExecution({ namespace: "handover", workflowId, workflowType: "T", taskQueue: "q" });
      // B holds its acks and lags behind a write: a's failover waits in HANDOVER.
      acks.gate.close();
      await start("before");
      const failover = a.client(OperatorService).failoverNamespace({ namespace: "handover", targetCluster: "clusterB", timeout: { seconds: 30n } });
      try {
        await eventually(async () => expect(await state(a)).toBe(ReplicationState.HANDOVER));
        // The other server restarts (a deploy, a crash): its start resets only HANDOVERs no failover holds.
        await a2.stop();
        a2 = await startTestCluster({ store, name: "clusterA", initialFailoverVersion: 1, shards: 1, dataLocation: a.dataLocation });
        expect(await state(a2)).toBe(ReplicationState.HANDOVER);
        // Writes still wait out the handover (then a retryable UNAVAILABLE), not through it.
        await rejects(start("during"), Code.Unavailable, "namespace handover is in handover");
      } finally {
        acks.gate.open();
      }
      const res = await failover;
      expect(res.namespace!.replicationConfig!.activeClusterName).toBe("clusterB");
    });

    test("AHandoverWhoseServerDiedIsResetByTheOthers: a HANDOVER no failover holds goes back to NORMAL within seconds, no restart needed", async () => {
      await globalNamespace(a, b, "orphaned");
      // As if the server running its failover died: HANDOVER in the database, its lock free.
      const set = await a.server.database.db.update(namespaces).set({ replicationState: "HANDOVER" }).where(eq(namespaces.name, "orphaned")).returning();
      expect(set.length).toBe(1);
      const state = async (x: TestCluster) => (await x.client(WorkflowService).describeNamespace({ namespace: "orphaned" })).namespace!.replicationConfig!.state;
      await eventually(async () => expect(await state(a2)).toBe(ReplicationState.NORMAL), { timeout: 10_000 });
      await a.client(WorkflowService).startWorkflowExecution({ namespace: "orphaned", workflowId: "after", workflowType: "T", taskQueue: "q" });
    });
  });
}
