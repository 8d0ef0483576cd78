import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { eq } from "drizzle-orm";
import { createReplicationCleanup } from "../../replication/cleanup";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { clusterMetadata, namespaceReplicationTasks, replicationAckLevels, replicationTasks } from "../../src/persistence/schema";
import { startTestCluster, type TestCluster } from "../support/server";

setDefaultTimeout(30_000);

describe("replication task cleanup without a peer pulling", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await startTestCluster({ store: "pglite", name: "clusterC", initialFailoverVersion: 3 });
  });
  afterAll(() => c.destroy());

  test("RemoteWithoutAckHoldsTasks, NoRemoteDeletesAfterGrace", async () => {
    const db = c.server.database.db;
    await c.client(WorkflowService).registerNamespace({ namespace: "g", isGlobalNamespace: true });
    for (const workflowId of ["w-0", "w-1", "w-2"]) {
      await c.client(WorkflowService).startWorkflowExecution({ namespace: "g", workflowId, workflowType: "T", taskQueue: "q" });
    }
    const [self] = await db.select().from(clusterMetadata);
    // A known remote that never pulled (e.g. disabled) has acked nothing: every task stays.
    await db.insert(clusterMetadata).values({ ...self!, clusterName: "clusterZ", clusterId: "z", isCurrent: false, initialFailoverVersion: 9, enableConnection: false });
    expect(await createReplicationCleanup({ db, log: c.server.log, graceMs: 0 }).runOnce()).toBe(0);
    await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, "clusterZ"));
    expect(await createReplicationCleanup({ db, log: c.server.log, graceMs: 3_600_000 }).runOnce()).toBe(0);
    expect(await createReplicationCleanup({ db, log: c.server.log, graceMs: 0, now: () => new Date(Date.now() + 1000) }).runOnce()).toBe(3);
    expect(await db.$count(replicationTasks)).toBe(0);
  });

  test("NamespaceTasksGoOnceEveryRemoteAckedThem", async () => {
    const db = c.server.database.db;
    await c.client(WorkflowService).registerNamespace({ namespace: "n1", isGlobalNamespace: true });
    await c.client(WorkflowService).updateNamespace({ namespace: "n1", description: "two" });
    const ids = (await db.select({ id: namespaceReplicationTasks.taskId }).from(namespaceReplicationTasks)).map((r) => r.id).sort((x, y) => x - y);
    expect(ids.length).toBeGreaterThanOrEqual(2);
    const [self] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, true));
    await db.insert(clusterMetadata).values({ ...self!, clusterName: "clusterY", clusterId: "y", isCurrent: false, initialFailoverVersion: 8 });
    const cleanup = createReplicationCleanup({ db, log: c.server.log, graceMs: 0 });
    await cleanup.runOnce();
    expect(await db.$count(namespaceReplicationTasks)).toBe(ids.length); // Y acked nothing yet
    await db.insert(replicationAckLevels).values({ remoteCluster: "clusterY", direction: "outbound", queue: "namespace", shardId: 0, ackLevel: ids.at(-2)! });
    await cleanup.runOnce();
    expect((await db.select({ id: namespaceReplicationTasks.taskId }).from(namespaceReplicationTasks)).map((r) => r.id)).toEqual([ids.at(-1)!]);
    await db.delete(replicationAckLevels).where(eq(replicationAckLevels.remoteCluster, "clusterY"));
    await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, "clusterY"));
  });
});
