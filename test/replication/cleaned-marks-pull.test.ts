import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { and, eq } from "drizzle-orm";
import { Code } from "@connectrpc/connect";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { clusterMetadata, replicationAckLevels, replicationTasks } from "../../src/persistence/schema";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";
import { addr, globalNamespace } from "./support";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";
/** Far past the test: the sender's answers from memory (peer enabled, cleaned marks) last this long. */
const RECHECK_MS = 120_000;

/**
 * PullReplicationTasks's cleaned marks (sender.ts, cleanedMarks) were cached for the sender's
 * recheck: another process of the cluster (here, writes to its database) disabling the puller,
 * the cleanup deleting past its ack and an enable, all within that time, left a page read from
 * the database after the delete without the mark, and the puller passed the hole.
 */
for (const store of await testStores()) {
  describe(`PullReplicationTasks's cleaned marks on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    beforeAll(async () => {
      [a, b] = await startClusters(store, [
        { shards: 1, serverOptions: { replication: { cleanupIntervalMs: 100, disabledRemoteGraceMs: 300, senderRecheckMs: RECHECK_MS } } },
        { shards: 1 },
      ]);
      // One way only: clusterB does not pull, the test pulls in its name.
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    const pull = (after: bigint, readsCleanedThrough = true) => a.client(AdminService).pullReplicationTasks({
      clusterName: b.name, pageSize: 100, shards: [{ shardId: 1, afterTaskId: after, ackedTaskId: after }], readsCleanedThrough,
    });
    let seen = 0n;
    const start = (workflowId: string) => a.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId, workflowType: "T", taskQueue: "q" });
    const enableB = (enable: boolean) =>
      a.server.database.db.update(clusterMetadata).set({ enableConnection: enable, updatedAt: new Date() }).where(eq(clusterMetadata.clusterName, b.name));

    test("TestADisableCleanupAndEnableByAnotherProcessWithinTheRecheckStillSaysTheMark", async () => {
      await start("w-1");
      const first = await pull(0n);
      seen = first.shards[0]!.lastTaskId;
      expect(seen).toBeGreaterThan(0n);
      // Acked through what it took; no mark yet.
      expect((await pull(seen)).shards[0]?.cleanedThroughTaskId ?? 0n).toBe(0n);

      await enableB(false);
      await start("w-2");
      await eventually(async () => expect(await a.server.database.db.$count(replicationTasks)).toBe(0), { timeout: 30_000 });
      const [mark] = await a.server.database.db.select({ through: replicationAckLevels.cleanedThrough }).from(replicationAckLevels)
        .where(and(eq(replicationAckLevels.remoteCluster, b.name), eq(replicationAckLevels.queue, "history"), eq(replicationAckLevels.direction, "outbound")));
      expect(mark!.through).toBeGreaterThan(Number(seen));
      await enableB(true);

      // Pages from the outbox tail carry w-2's task itself; once it is let go (5 s), the database page must say the mark.
      await eventually(async () => {
        const page = (await pull(seen)).shards[0]!;
        expect(page.tasks).toHaveLength(0);
        expect(page.cleanedThroughTaskId).toBe(BigInt(mark!.through));
      }, { timeout: 30_000 });
    });

    test("TestAPullerThatDoesNotReadTheMarkIsRefusedACursorBelowIt, naming the upgrade", async () => {
      const admin = a.client(AdminService);
      const why = `is below the replication tasks ${a.name} deleted while ${b.name} was disabled past its grace`;
      // A tern before the mark: its pulls and streams do not say they read it.
      await rejects(pull(seen, false), Code.FailedPrecondition, why);
      const stream = admin.streamReplicationTasks({ clusterName: b.name, cursors: { shardIds: [1], afterTaskIds: [seen], ackedTaskIds: [seen], pageSizes: [] } });
      await rejects((async () => { for await (const _ of stream) break; })(), Code.FailedPrecondition, `Upgrade ${b.name}`);
      // GetReplicationTasks has no room for the mark.
      await rejects(admin.getReplicationTasks({ shardId: 1, afterTaskId: seen, pageSize: 10, includeEvents: true, clusterName: b.name }), Code.FailedPrecondition, why);
      // One that reads it is told the mark; a cursor at it is served as before, by every call.
      expect((await pull(seen)).shards[0]!.cleanedThroughTaskId).toBeGreaterThan(seen);
      const mark = (await pull(seen)).shards[0]!.cleanedThroughTaskId;
      expect((await pull(mark, false)).shards[0]!.cleanedThroughTaskId).toBe(0n);
      expect((await admin.getReplicationTasks({ shardId: 1, afterTaskId: mark, pageSize: 10, includeEvents: true, clusterName: b.name })).tasks).toHaveLength(0);
    });
  });
}
