import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { ReplicationState } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { describeOn, expectActiveOn, startOrdersPair } from "./mesh";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const start = (x: TestCluster, workflowId: string) =>
  x.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId, workflowType: "order", taskQueue: "q" });
const lastWriteVersion = async (x: TestCluster, workflowId: string) =>
  (await x.client(WorkflowService).describeWorkflowExecution({ namespace: "orders", execution: { workflowId } })).lastWriteVersion;

for (const store of await testStores()) {
  describe(`forced failover on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    beforeAll(async () => {
      [a, b] = await startOrdersPair(store);
    });
    afterAll(() => Promise.all([a, b].map((x) => x.destroy())));

    test("TestWriteOnPassiveRefusedNamingActiveCluster", async () => {
      await rejects(start(b, "on-b"), Code.FailedPrecondition, "namespace orders is active in cluster clusterA");
      await start(a, "on-a");
      expect(await lastWriteVersion(a, "on-a")).toBe(1n);
    });

    test("TestForcedFailoverIssuedOnPassiveSwitchesAtOnce", async () => {
      const res = await b.client(WorkflowService).updateNamespace({ namespace: "orders", activeClusterName: "clusterB" });
      expect(res.namespace!.failoverVersion).toBe(2n);
      expect(res.namespace!.replicationConfig!.activeClusterName).toBe("clusterB");
      // B takes writes at once, stamped with its new version.
      await start(b, "after-failover");
      expect(await lastWriteVersion(b, "after-failover")).toBe(2n);
      await expectActiveOn(a, "orders", "clusterB", 2n);
      await rejects(start(a, "refused-on-a"), Code.FailedPrecondition, "namespace orders is active in cluster clusterB");
    });

    test("TestForcedFailoverBackToAGivesVersion101", async () => {
      const res = await a.client(WorkflowService).updateNamespace({ namespace: "orders", activeClusterName: "clusterA" });
      expect(res.namespace!.failoverVersion).toBe(101n);
      await start(a, "back-on-a");
      expect(await lastWriteVersion(a, "back-on-a")).toBe(101n);
      const onB = await expectActiveOn(b, "orders", "clusterA", 101n);
      expect(onB.failoverHistory.map((f) => [f.fromCluster, f.toCluster, f.failoverVersion])).toEqual([
        ["clusterB", "clusterA", 101n],
        ["clusterA", "clusterB", 2n],
      ]);
    });

    test("TestReplicationStateNormalOnAllClustersAfterFailovers", async () => {
      for (const x of [a, b]) expect((await describeOn(x, "orders")).replicationConfig!.state).toBe(ReplicationState.NORMAL);
    });
  });
}
