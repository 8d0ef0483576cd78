import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { and, eq, gt } from "drizzle-orm";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { clusterMetadata, replicationAckLevels, replicationTasks } from "../../src/persistence/schema";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";
import { addr, connectBothWays, expectSameHistories, globalNamespace } from "./support";

setDefaultTimeout(serverStartTimeout);

const NS = "payroll";
const GRACE_MS = 2_000;

/**
 * The cleanup counted a disabled remote's grace from its row's updatedAt, which every upsert sets:
 * an operator (or a script) upserting it disabled again within the grace restarted it, and the
 * remote held the history queue for as long as that went on. It counts from disabled_at now.
 */
for (const store of await testStores()) {
  describe(`a remote kept disabled by upserts on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    beforeAll(async () => {
      [a, b] = await startClusters(store, [{ serverOptions: { replication: { cleanupIntervalMs: 100, disabledRemoteGraceMs: GRACE_MS } } }, {}]);
      await connectBothWays(a, b);
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    const start = (id: string) => a.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId: id, workflowType: "T", taskQueue: "q" });
    const connectionToB = (enable: boolean) => a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: enable });
    const disabledAt = async () =>
      (await a.server.database.db.select({ at: clusterMetadata.disabledAt }).from(clusterMetadata).where(eq(clusterMetadata.clusterName, b.name)))[0]!.at;

    test("TestAnUpsertThatKeepsARemoteDisabledDoesNotRestartItsGrace", async () => {
      await start("w-0");
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 30_000 });
      expect(await disabledAt()).toBeNull();

      await connectionToB(false);
      const first = await disabledAt();
      expect(first).toBeInstanceOf(Date);
      await start("w-1");
      // Upserted disabled again every 250 ms, far within the grace: the grace still ends.
      await eventually(async () => {
        await connectionToB(false);
        expect(await a.server.database.db.$count(replicationTasks)).toBe(0);
      }, { timeout: 10 * GRACE_MS, interval: 250 });
      expect(await disabledAt()).toEqual(first);
      const marks = await a.server.database.db.select().from(replicationAckLevels)
        .where(and(eq(replicationAckLevels.remoteCluster, b.name), gt(replicationAckLevels.cleanedThrough, 0)));
      expect(marks.length).toBeGreaterThan(0);

      // Enabled, it backfills; disabled again later, its grace starts over.
      await connectionToB(true);
      expect(await disabledAt()).toBeNull();
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 60_000 });
      await connectionToB(false);
      expect((await disabledAt())!.getTime()).toBeGreaterThan(first!.getTime());
    });
  });
}
