import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { eq } from "drizzle-orm";
import { createReplicationCleanup } from "../../replication/cleanup";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { clusterMetadata, replicationTasks } from "../../src/persistence/schema";
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
});
