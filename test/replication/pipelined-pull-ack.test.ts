import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { outboundAcks } from "../../replication/ack-levels";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

for (const store of await testStores()) {
  describe(`pipelined pull on ${store}: the source acks what the peer applied, not what it fetched`, () => {
    let a: TestCluster, b: TestCluster;
    const ackOfB = async () => (await outboundAcks(a.server.database.db, "clusterB")).get(1) ?? 0;

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{ shards: 1 }, { shards: 1 }]);
      // One way only: clusterB does not pull, the test pulls in its name.
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      await a.client(WorkflowService).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      for (const id of ["w1", "w2", "w3"]) await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: id, workflowType: "T", taskQueue: "q" });
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("PrefetchPastTheAppliedPageAcksOnlyTheAppliedPosition", async () => {
      const admin = a.client(AdminService);
      const first = await admin.getReplicationTasks({ shardId: 1, afterTaskId: 0n, ackedTaskId: 0n, pageSize: 2, clusterName: "clusterB" });
      expect(first.tasks).toHaveLength(2);
      // Fetching the next page while the first applies: nothing applied yet.
      await admin.getReplicationTasks({ shardId: 1, afterTaskId: first.lastTaskId, ackedTaskId: 0n, pageSize: 2, clusterName: "clusterB" });
      await Bun.sleep(400); // past the save interval: a wrong ack would be stored by now
      expect(await ackOfB()).toBe(0);
      await admin.getReplicationTasks({ shardId: 1, afterTaskId: 3n, ackedTaskId: first.lastTaskId, clusterName: "clusterB" });
      await eventually(async () => expect(await ackOfB()).toBe(Number(first.lastTaskId)), { timeout: 5_000 });
    });

    test("APullerThatSendsNoAckedTaskIdIsAckedAtItsAfterTaskId (older clusters)", async () => {
      await a.client(AdminService).getReplicationTasks({ shardId: 1, afterTaskId: 3n, clusterName: "clusterB" });
      await eventually(async () => expect(await ackOfB()).toBe(3), { timeout: 5_000 });
    });
  });
}
