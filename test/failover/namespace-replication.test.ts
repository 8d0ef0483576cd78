import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { eq } from "drizzle-orm";
import { NamespaceState, ReplicationState } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { namespaces } from "../../src/persistence/schema";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr, connectAll, describeOn, eventuallyOn, startClusters } from "./mesh";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

for (const store of await testStores()) {
  describe(`namespace replication on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [{}, {}, { shards: 2 }]);
      await connectAll([a, b, c]);
    });
    afterAll(() => Promise.all([a, b, c].map((x) => x.destroy())));

    test("TestNamespaceCreatedOnMasterShowsUpOnAllClusters", async () => {
      const reg = await a.client(WorkflowService).registerNamespace({
        namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"], description: "orders",
      });
      const id = reg.namespace!.namespaceInfo!.id;
      for (const x of [b, c]) {
        const ns = await eventuallyOn(x, "orders", () => {});
        expect(ns.namespaceInfo!.id).toBe(id);
        expect(ns.isGlobalNamespace).toBe(true);
        expect(ns.failoverVersion).toBe(1n);
        expect(ns.replicationConfig).toMatchObject({ activeClusterName: "clusterA", clusters: ["clusterA", "clusterB", "clusterC"], state: ReplicationState.NORMAL });
        expect(ns.namespaceInfo!.description).toBe("orders");
      }
    });

    test("TestNamespaceUpdateAndDeprecatePropagate", async () => {
      await a.client(WorkflowService).registerNamespace({ namespace: "billing", isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"] });
      const up = await a.client(WorkflowService).updateNamespace({ namespace: "billing", description: "v2", ownerEmail: "ops@example.com", data: { team: "pay" } });
      for (const x of [b, c]) {
        await eventuallyOn(x, "billing", (ns) => {
          expect(ns.namespaceInfo!.description).toBe("v2");
          expect(ns.namespaceInfo!.data).toEqual({ team: "pay" });
          expect(ns.configVersion).toBe(up.namespace!.configVersion);
        });
      }
      await a.client(WorkflowService).deprecateNamespace({ namespace: "billing" });
      for (const x of [b, c]) await eventuallyOn(x, "billing", (ns) => expect(ns.namespaceInfo!.state).toBe(NamespaceState.DEPRECATED));
    });

    test("TestAGlobalNamespaceIsChangedOnItsActiveClusterOnly: a passive member refuses an update, a deprecate and a delete", async () => {
      await a.client(WorkflowService).registerNamespace({ namespace: "owned", isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"], description: "v1" });
      await eventuallyOn(b, "owned", () => {});
      const onB = b.client(WorkflowService);
      // Two clusters changing it at once would each keep their own at the same config version.
      await rejects(onB.updateNamespace({ namespace: "owned", description: "fromB" }), Code.FailedPrecondition, "namespace owned is global and active in cluster clusterA: update it there (on clusterB only a forced failover, a new active cluster, is taken)");
      await rejects(onB.deprecateNamespace({ namespace: "owned" }), Code.FailedPrecondition, "deprecate it there");
      // A forced failover to the cluster active already is no failover: B says so.
      await rejects(onB.updateNamespace({ namespace: "owned", activeClusterName: "clusterA" }), Code.FailedPrecondition, "namespace owned is already active in cluster clusterA: a forced failover needs another of its clusters (clusterA, clusterB, clusterC)");
      // B would go on receiving its tasks and apply none of them, nor any behind them.
      await rejects(b.client(OperatorService).deleteNamespace({ namespace: "owned" }), Code.FailedPrecondition, "delete it on clusterA, or take clusterB out of its clusters there first");
      expect((await describeOn(b, "owned")).namespaceInfo!.description).toBe("v1");
      // On the active cluster it is changed as ever, and reaches B.
      await a.client(WorkflowService).updateNamespace({ namespace: "owned", description: "v2" });
      await eventuallyOn(b, "owned", (ns) => expect(ns.namespaceInfo!.description).toBe("v2"));
    });

    test("TestANamespacePastTheLimitsAtItsSourceIsAppliedOnPassiveClusters (an older source took it)", async () => {
      await a.client(WorkflowService).registerNamespace({ namespace: "roomy", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await eventuallyOn(b, "roomy", () => {});
      // What a source without the limits holds: written past the registry, which would refuse it.
      const data = Object.fromEntries(Array.from({ length: 70 }, (_, i) => [`k${i}`, "v".repeat(2000)]));
      await a.server.database.db.update(namespaces).set({ description: "d".repeat(5000), data }).where(eq(namespaces.name, "roomy"));
      const up = await a.client(WorkflowService).updateNamespace({ namespace: "roomy", ownerEmail: "ops@example.com" });
      await eventuallyOn(b, "roomy", (ns) => {
        expect(ns.configVersion).toBe(up.namespace!.configVersion);
        expect(ns.namespaceInfo!.description.length).toBe(5000);
        expect(ns.namespaceInfo!.data).toEqual(data);
      });
    });

    test("TestLocalNamespaceNeverReplicates", async () => {
      await a.client(WorkflowService).registerNamespace({ namespace: "scratch" });
      await a.client(WorkflowService).registerNamespace({ namespace: "marker", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await eventuallyOn(b, "marker", () => {}); // queued after "scratch": B has seen past it
      await expect(describeOn(b, "scratch")).rejects.toThrow("not found");
      await expect(describeOn(c, "marker")).rejects.toThrow("not found");
    });

    test("TestClusterAddedToTheListLaterGetsTheNamespace", async () => {
      await a.client(WorkflowService).registerNamespace({ namespace: "late", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await eventuallyOn(b, "late", () => {});
      await expect(describeOn(c, "late")).rejects.toThrow("not found");
      await a.client(WorkflowService).updateNamespace({ namespace: "late", clusters: ["clusterA", "clusterB", "clusterC"] });
      await eventuallyOn(c, "late", (ns) => expect(ns.replicationConfig!.clusters).toEqual(["clusterA", "clusterB", "clusterC"]));
      await eventuallyOn(b, "late", (ns) => expect(ns.replicationConfig!.clusters).toContain("clusterC"));
    });

    test("TestDisablingAConnectionEndsAnOpenNamespacePoll: a namespace change made after it is not served to the peer", async () => {
      // B's poll on A was open when A disabled B: a change committed then must wait for the
      // connection to be enabled again, as history pages do, not ride out on that poll.
      const admin = a.client(AdminService);
      const { maxTaskId } = await admin.getNamespaceReplicationTasks({ afterTaskId: 0n, clusterName: "clusterB", pageSize: 1, waitTimeoutMs: 0 });
      // Its answer is read from the start: the disable ends it at once, maybe while the register
      // below is still on its way, and a rejection read only after would be unhandled meanwhile.
      const poll = rejects(
        admin.getNamespaceReplicationTasks({ afterTaskId: maxTaskId, clusterName: "clusterB", pageSize: 100, waitTimeoutMs: 15_000 }),
        Code.FailedPrecondition,
        "replication with cluster clusterB is disabled on clusterA",
      );
      const op = a.client(OperatorService);
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: false });
      try {
        await a.client(WorkflowService).registerNamespace({ namespace: "while-disabled", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
        await poll;
        await expect(describeOn(b, "while-disabled")).rejects.toThrow("not found");
      } finally {
        await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: true });
      }
      await eventuallyOn(b, "while-disabled", () => {});
    });

    test("TestNamespaceQueueResumesAfterReceiverRestart", async () => {
      await b.stop();
      await a.client(WorkflowService).registerNamespace({ namespace: "while-down", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await a.client(WorkflowService).updateNamespace({ namespace: "orders", description: "changed while B was down" });
      const restarted = await startTestCluster({ store, name: "clusterB", initialFailoverVersion: 2, dataLocation: b.dataLocation });
      try {
        await eventuallyOn(restarted, "while-down", () => {});
        await eventuallyOn(restarted, "orders", (ns) => expect(ns.namespaceInfo!.description).toBe("changed while B was down"));
      } finally {
        await restarted.stop();
      }
    });
  });
}
