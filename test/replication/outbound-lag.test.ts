import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { eq } from "drizzle-orm";
import { createReplicationCleanup } from "../../replication/cleanup";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { clusterMetadata, replicationAckLevels, replicationTasks } from "../../src/persistence/schema";
import { parseCounter } from "../../bench/lib/prom-histogram";
import { eventually } from "../support/eventually";
import { startTestCluster, type TestCluster } from "../support/server";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

describe("replication_outbound_tasks_lag as the server's own cleanup sets it", () => {
  let c: TestCluster;
  beforeAll(async () => {
    // The server's passes every 100 ms set the gauge; with no remote they delete nothing younger than a minute.
    c = await startTestCluster({ store: "pglite", name: "clusterC", initialFailoverVersion: 3, serverOptions: { replication: { cleanupIntervalMs: 100 } } });
  });
  afterAll(() => c.destroy());

  // The gauge was the shard's last task id less the ack: a remote that never acked read behind by
  // every task the shard ever had, those deleted before it was added (never sent to it) among them,
  // where replication status counts the tasks the queue still holds.
  test("TestTheOutboundLagGaugeAgreesWithTheStatusForARemoteThatNeverAcked", async () => {
    const db = c.server.database.db;
    const wf = c.client(WorkflowService);
    await wf.registerNamespace({ namespace: "gauged", isGlobalNamespace: true });
    const start = (workflowId: string) => wf.startWorkflowExecution({ namespace: "gauged", workflowId, workflowType: "T", taskQueue: "q" });
    for (const id of ["g-0", "g-1", "g-2", "g-3"]) await start(id);
    // No remote yet: past the grace, a cleanup deletes them.
    await createReplicationCleanup({ db, log: c.server.log, graceMs: 0, now: () => new Date(Date.now() + 1000) }).runOnce();
    expect(await db.$count(replicationTasks)).toBe(0);
    for (const id of ["g-4", "g-5"]) await start(id);
    const [self] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, true));
    await db.insert(clusterMetadata).values({ ...self!, clusterName: "clusterW", clusterId: "w", isCurrent: false, initialFailoverVersion: 7, enableConnection: false });
    try {
      const gauge = async (shardId: number) => {
        const text = await (await fetch(`${c.url}/metrics`)).text();
        return parseCounter(text, "replication_outbound_tasks_lag", { remote_cluster: "clusterW", shard: String(shardId) });
      };
      const { remotes } = await c.client(AdminService).getReplicationStatus({});
      const w = remotes.find((r) => r.clusterName === "clusterW")!;
      expect(w.outbound.reduce((n, s) => n + s.lagTasks, 0n)).toBe(2n);
      // Before: each shard's last task id (6 in all at least), where the status says 2.
      await eventually(async () => {
        for (const s of w.outbound) expect(await gauge(s.shardId)).toBe(Number(s.lagTasks));
      });
      // W acks a shard's first task left: both say one fewer there.
      const [first] = await db.select().from(replicationTasks).orderBy(replicationTasks.taskId).limit(1);
      await db.insert(replicationAckLevels).values({ remoteCluster: "clusterW", direction: "outbound", queue: "history", shardId: first!.shardId, ackLevel: first!.taskId });
      const after = (await c.client(AdminService).getReplicationStatus({})).remotes.find((r) => r.clusterName === "clusterW")!;
      expect(after.outbound.reduce((n, s) => n + s.lagTasks, 0n)).toBe(1n);
      await eventually(async () => {
        for (const s of after.outbound) expect(await gauge(s.shardId)).toBe(Number(s.lagTasks));
      });
    } finally {
      await db.delete(replicationAckLevels).where(eq(replicationAckLevels.remoteCluster, "clusterW"));
      await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, "clusterW"));
    }
  });
});
