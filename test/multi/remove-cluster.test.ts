import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { createReplicationCleanup } from "../../replication/cleanup";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import type { NamespaceDescription } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { namespaceReplicationTasks, replicationTasks } from "../../src/persistence/schema";
import { backfillDone, T } from "../backfill/support";
import { addr, connectAll, eventuallyOn, startClusters, startOrdersPair } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { createGate } from "../support/gate";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** x's replication_outbound_tasks_lag series for remote, read from /metrics: how many, and their sum. */
async function outboundLag(x: TestCluster, remote: string): Promise<[number, number]> {
  const text = await (await fetch(`${x.url}/metrics`)).text();
  const values = [...text.matchAll(/^replication_outbound_tasks_lag\{([^}]*)\} (\S+)$/gm)].filter((m) => m[1]!.includes(`remote_cluster="${remote}"`)).map((m) => Number(m[2]));
  return [values.length, values.reduce((n, v) => n + v, 0)];
}

for (const store of await testStores()) {
  describe(`removing a cluster that is down on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    let back: TestCluster | undefined;
    beforeAll(async () => {
      [a, b] = await startOrdersPair(store);
    });
    afterAll(async () => {
      await Promise.all([a.destroy(), back?.destroy()]);
      await b.destroy();
    });

    test("TestRemovedWhileDownThenReAddedConverges: a cluster taken out of a namespace and removed while down is backfilled when added back", async () => {
      const wf = a.client(WorkflowService);
      const op = a.client(OperatorService);
      await wf.registerNamespace({ namespace: "retired", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await eventuallyOn(b, "retired", () => {});
      for (let i = 0; i < 3; i++) await wf.startWorkflowExecution({ namespace: "orders", workflowId: `before-${i}`, ...T });
      await eventually(async () => expect((await a.client(AdminService).verifyReplication({ namespace: "orders", cluster: "clusterB" })).missing).toEqual([]));
      await b.stop();
      // B is down: A's writes wait in its queue for B.
      for (let i = 0; i < 5; i++) await wf.startWorkflowExecution({ namespace: "orders", workflowId: `while-down-${i}`, ...T });
      await wf.signalWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: "before-0" }, signalName: "late" });
      // The backlog kept for B shows in A's metrics (B, down, reports no lag), as in replication status.
      const cleanup = createReplicationCleanup({ db: a.server.database.db, log: a.server.log, graceMs: 0, now: () => new Date(Date.now() + 1000), metrics: a.server.metrics });
      // An ack B sent as it stopped may still land on A, and A's own cleanup sets the gauge too (every
      // 10 s, from what it read when its pass began): the pass and the status are read again until
      // they agree (a CI run under load saw them differ once).
      await eventually(async () => {
        await cleanup.runOnce();
        const status = await a.client(AdminService).getReplicationStatus({});
        const kept = status.remotes[0]!.outbound.reduce((n, s) => n + Number(s.lagTasks), 0);
        expect(kept).toBeGreaterThanOrEqual(6);
        expect(await outboundLag(a, "clusterB")).toEqual([4, kept]);
      });
      await rejects(op.removeRemoteCluster({ clusterName: "clusterB" }), Code.FailedPrecondition, "still listed by namespace(s) orders");
      await wf.updateNamespace({ namespace: "orders", clusters: ["clusterA"] });
      await wf.updateNamespace({ namespace: "retired", clusters: ["clusterA"] });
      await op.removeRemoteCluster({ clusterName: "clusterB" });
      await rejects(wf.updateNamespace({ namespace: "orders", activeClusterName: "clusterB" }), Code.NotFound, "cluster clusterB is not known to cluster clusterA");
      // With no remote left, the cleanup drops the queue after its grace: what B had not taken is gone.
      // (A's own pass, begun before the remove, may set B's series again after it: its next pass drops them.)
      await eventually(async () => {
        await cleanup.runOnce();
        expect(await a.server.database.db.$count(replicationTasks)).toBe(0);
        expect(await outboundLag(a, "clusterB")).toEqual([0, 0]);
      }, { timeout: 15_000 });
      await wf.startWorkflowExecution({ namespace: "orders", workflowId: "while-out", ...T });

      // B comes back on its data, still holding orders as listing it, and is added back.
      back = await startTestCluster({ store, name: "clusterB", initialFailoverVersion: 2, dataLocation: b.dataLocation });
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(back) });
      await wf.updateNamespace({ namespace: "orders", clusters: ["clusterA", "clusterB"] });
      await eventuallyOn(back, "orders", (ns) => expect(ns.configVersion).toBe(2n));
      await backfillDone(back, "orders", "clusterA", 30_000);
      const res = await eventually(async () => {
        const r = await a.client(AdminService).verifyReplication({ namespace: "orders", cluster: "clusterB" });
        expect([r.missing, r.extra, r.diverging, r.behind]).toEqual([[], [], [], []]);
        return r;
      }, { timeout: 20_000 });
      expect([res.localExecutions, res.remoteExecutions]).toEqual([9n, 9n]);
      // B is not added back to "retired": connected again, it learns it is out, and refuses to take it over.
      await eventuallyOn(back, "retired", (ns) => expect(ns.replicationConfig!.clusters).toEqual(["clusterA"]));
      await rejects(back.client(WorkflowService).updateNamespace({ namespace: "retired", activeClusterName: "clusterB" }), Code.InvalidArgument, "must be one of the namespace's clusters");
    });
  });
}

for (const store of await testStores()) {
  describe(`re-adding a removed cluster through two clusters on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    let back: TestCluster | undefined;
    const gate = createGate();
    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [{}, {}, {}]);
      await connectAll([a, b, c]);
    });
    afterAll(async () => {
      gate.open();
      await Promise.all([a.destroy(), c.destroy(), back?.destroy()]);
      await b.destroy();
    });

    test("TestReAddedByAnotherClusterBeforeItHearsItLeft: B takes its re-add from A before C's word that it was out, and still backfills", async () => {
      await a.client(WorkflowService).registerNamespace({ namespace: "n", isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"], activeClusterName: "clusterC" });
      for (const x of [b, c]) await eventuallyOn(x, "n", () => {});
      await c.client(WorkflowService).startWorkflowExecution({ namespace: "n", workflowId: "before", ...T });
      await eventually(async () => expect((await c.client(AdminService).verifyReplication({ namespace: "n", cluster: "clusterB" })).missing).toEqual([]));
      await b.stop();
      await c.client(WorkflowService).startWorkflowExecution({ namespace: "n", workflowId: "while-down", ...T });
      await c.client(WorkflowService).updateNamespace({ namespace: "n", clusters: ["clusterA", "clusterC"] });
      await eventuallyOn(a, "n", (ns) => expect(ns.replicationConfig!.clusters).toEqual(["clusterA", "clusterC"]));
      for (const x of [a, c]) await x.client(OperatorService).removeRemoteCluster({ clusterName: "clusterB" });
      // Once A acked it all, C's queues hold nothing for B: the task taking it out of n is gone.
      await eventually(async () => {
        await createReplicationCleanup({ db: c.server.database.db, log: c.server.log }).runOnce();
        expect([await c.server.database.db.$count(replicationTasks), await c.server.database.db.$count(namespaceReplicationTasks)]).toEqual([0, 0]);
      });

      // B back, holding its old copy of n (config version 0, listing it); what C sends it again
      // on connecting (n as it stands) is held until it applied A's re-add.
      gate.close();
      const beforeNamespaceApply = (ns: NamespaceDescription) => (ns.namespaceInfo?.name === "n" && ns.configVersion === 1n ? (gate.held ?? Promise.resolve()) : Promise.resolve());
      back = await startTestCluster({ store, name: "clusterB", initialFailoverVersion: 2, dataLocation: b.dataLocation, serverOptions: { replication: { beforeNamespaceApply } } });
      for (const x of [c, a]) await x.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(back) });
      await a.client(WorkflowService).updateNamespace({ namespace: "n", activeClusterName: "clusterA" });
      await a.client(WorkflowService).updateNamespace({ namespace: "n", clusters: ["clusterA", "clusterB", "clusterC"] });
      await eventuallyOn(back, "n", (ns) => expect(ns.configVersion).toBe(3n));
      gate.open();
      await backfillDone(back, "n", "clusterA", 30_000);
      await eventually(async () => {
        const r = await a.client(AdminService).verifyReplication({ namespace: "n", cluster: "clusterB" });
        expect([r.localExecutions, r.missing, r.behind, r.diverging]).toEqual([2n, [], [], []]);
      }, { timeout: 20_000 });
    });
  });
}
