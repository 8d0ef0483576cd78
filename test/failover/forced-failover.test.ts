import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { ReplicationState } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { tern } from "../backfill/support";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { describeOn, eventuallyOn, expectActiveOn, startOrdersPair } from "./mesh";
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
      // Last, so that a server that does not say so leaves the next tests their failover to build on.
      expect(res.failedOver).toBe(true);
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

    test("TestFailoverHistoryTellsForcedFromGraceful", async () => {
      // Was: 'Updated namespace orders (...)' for a forced failover, and a history of from → to @version alone.
      await a.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: "clusterB" });
      await expectActiveOn(a, "orders", "clusterB", 102n);
      const forced = await tern(a, "operator", "namespace", "update", "-n", "orders", "--active-cluster", "clusterA");
      expect([forced.code, forced.err]).toEqual([0, ""]);
      expect(forced.out).toMatch(/^Failed over namespace orders from clusterB to clusterA \(forced\): global; active: clusterA; clusters: clusterA, clusterB; failover version: 201; /);
      // An update on the active cluster naming it active is no failover.
      const same = await tern(a, "operator", "namespace", "update", "-n", "orders", "--active-cluster", "clusterA", "--description", "same");
      expect(same.out).toMatch(/^Updated namespace orders \(global; active: clusterA; .*failover version: 201;/);
      const onB = await eventuallyOn(b, "orders", (ns) => expect(ns.namespaceInfo!.description).toBe("same"));
      expect(onB.failoverHistory.map((f) => [f.toCluster, f.failoverVersion, f.forced])).toEqual([
        ["clusterA", 201n, true],
        ["clusterB", 102n, false],
        ["clusterA", 101n, true],
        ["clusterB", 2n, true],
      ]);
      const described = await tern(b, "operator", "namespace", "describe", "orders");
      const history = described.out.slice(described.out.indexOf("FailoverHistory:")).split("\n").slice(1, 5);
      expect(history.map((l) => l.replace(/^ +\S+ +/, ""))).toEqual([
        "clusterB → clusterA @201 (forced)",
        "clusterA → clusterB @102 (graceful)",
        "clusterB → clusterA @101 (forced)",
        "clusterA → clusterB @2 (forced)",
      ]);
    });

    test("TestReplicationStateNormalOnAllClustersAfterFailovers", async () => {
      for (const x of [a, b]) expect((await describeOn(x, "orders")).replicationConfig!.state).toBe(ReplicationState.NORMAL);
    });
  });
}
