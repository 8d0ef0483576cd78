import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { fileURLToPath } from "node:url";
import { Code } from "@connectrpc/connect";
import { createReplicationCleanup } from "../../replication/cleanup";
import { ACTIVE_CLUSTER_HEADER } from "../../src/errors";
import { FORWARD_TIMEOUT_MS } from "../../src/frontend/forwarding";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { replicationTasks } from "../../src/persistence/schema";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { addr, describeOn, eventuallyOn, expectActiveOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const root = fileURLToPath(new URL("../..", import.meta.url));

async function tern(x: TestCluster, ...args: string[]): Promise<{ code: number; out: string }> {
  const child = Bun.spawn(["node", "bin/tern", "--address", addr(x), ...args], { cwd: root, stdout: "pipe", stderr: "pipe" });
  const [out, code] = await Promise.all([new Response(child.stdout).text(), child.exited]);
  return { code, out };
}

const unconnected = async (x: TestCluster) =>
  (await x.client(AdminService).getReplicationStatus({})).unconnected.map((u) => [u.namespace, u.clusterName, u.active]);

for (const store of await testStores()) {
  // A is connected to B and to C; B and C are not connected to each other.
  describe(`a global namespace over clusters not all connected to each other, on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    beforeAll(async () => {
      // C forwards writes to the active cluster (dcRedirectionPolicy).
      [a, b, c] = await startClusters(store, [{}, {}, { extraYaml: "dcRedirectionPolicy: { policy: selected-apis-forwarding }" }]);
      for (const [x, y] of [[a, b], [b, a], [a, c], [c, a]] as const) await x.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(y) });
      await a.client(WorkflowService).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"] });
      for (const x of [b, c]) await eventuallyOn(x, "orders", () => {});
    });
    afterAll(() => Promise.all([a, b, c].map((x) => x.destroy())));

    test("TestReplicationStatusNamesTheMembersNotConnectedHere, and a graceful failover that would leave one without the new active's writes is refused", async () => {
      expect(await unconnected(a)).toEqual([]);
      expect(await unconnected(b)).toEqual([["orders", "clusterC", false]]);
      expect(await unconnected(c)).toEqual([["orders", "clusterB", false]]);
      // A graceful failover to B is refused at once: C would take nothing B writes.
      await rejects(
        a.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: "clusterB" }),
        Code.FailedPrecondition,
        "cluster clusterB does not know cluster clusterC, one of the namespace's clusters, so clusterC would take nothing clusterB writes: connect them both ways; fix that first (a forced failover would leave it so too); orders stays active in clusterA",
      );
      // Active in B (forced, on A): what B writes now cannot reach C, and C's status says so.
      await a.client(WorkflowService).updateNamespace({ namespace: "orders", activeClusterName: "clusterB" });
      await expectActiveOn(c, "orders", "clusterB", 2n);
      expect(await unconnected(c)).toEqual([["orders", "clusterB", true]]);
      const cli = await tern(c, "replication", "status");
      expect(cli.code).toBe(0);
      expect(cli.out).toContain(
        "WARNING: namespace orders lists clusterB, which is not connected to clusterC: nothing of orders replicates between them " +
          "(it is active in clusterB: its writes do not reach clusterC); connect them both ways ('tern operator cluster upsert' on each)\n",
      );
    });

    test("TestWriteForwardedByAMemberNotConnectedToTheActiveClusterIsRefusedAtOnceNamingIt, not retryable: no retry helps until the two are connected", async () => {
      // Active in B (the test before), which C does not know: nowhere to forward to, and no wait.
      // Before, a retryable UNAVAILABLE ("retry with the same request id"), as if a retry could land.
      const started = Date.now();
      const refusal = "namespace orders is active in cluster clusterB; clusterC is not connected to clusterB, so it cannot forward the call there: " +
        "send it to clusterB, or connect the two clusters (cluster upsert on each)";
      const err = await rejects(
        c.client(WorkflowService).signalWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: "any" }, signalName: "s", requestId: "fwd-1" }),
        Code.FailedPrecondition,
        refusal,
      );
      expect([err.rawMessage, err.metadata.get(ACTIVE_CLUSTER_HEADER)]).toEqual([refusal, "clusterB"]);
      await rejects(c.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: "clusterA" }), Code.FailedPrecondition, refusal);
      // No forward waited out on the way (its bound: FORWARD_TIMEOUT_MS): the refusals' codes and texts are the behaviour.
      expect(Date.now() - started).toBeLessThan(FORWARD_TIMEOUT_MS);
    });

    test("TestConnectingTwoMembersLateBackfillsWhatOneWroteMeanwhile: its replication tasks were cleaned up once A had them", async () => {
      // B is active (the test before): it writes, A acks, B's cleanup drops the tasks C never saw.
      const wf = b.client(WorkflowService);
      await wf.startWorkflowExecution({ namespace: "orders", workflowId: "while-unconnected", workflowType: "t", taskQueue: "q" });
      await wf.signalWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: "while-unconnected" }, signalName: "s" });
      await eventually(async () => expect((await a.client(WorkflowService).describeWorkflowExecution({ namespace: "orders", execution: { workflowId: "while-unconnected" } })).nextEventId).toBe(3n));
      const cleanup = createReplicationCleanup({ db: b.server.database.db, log: b.server.log, graceMs: 0 });
      await eventually(async () => {
        await cleanup.runOnce();
        expect(await b.server.database.db.select().from(replicationTasks)).toEqual([]);
      });
      // Connected both ways: the warning goes, and C gets what B wrote.
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(c) });
      await c.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      expect(await unconnected(c)).toEqual([]);
      expect((await tern(c, "replication", "status")).out).not.toContain("WARNING");
      await eventually(async () => {
        const res = await b.client(AdminService).verifyReplication({ namespace: "orders", cluster: "clusterC" });
        expect([res.missing.length, res.extra.length, res.diverging.length, res.behind.length]).toEqual([0, 0, 0, 0]);
      }, { timeout: 15_000 });
    });
  });

  // A-B and B-C connected both ways, A-C not; orders registered on B, active there.
  describe(`a forced failover asked of a cluster its target does not pull from, on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    const activeEverywhere = async () => Promise.all([a, b, c].map(async (x) => (await describeOn(x, "orders")).replicationConfig!.activeClusterName));
    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [{}, {}, {}]);
      for (const [x, y] of [[a, b], [b, a], [b, c], [c, b]] as const) await x.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(y) });
      await b.client(WorkflowService).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"], activeClusterName: "clusterB" });
      for (const x of [a, c]) await eventuallyOn(x, "orders", () => {});
    });
    afterAll(() => Promise.all([a, b, c].map((x) => x.destroy())));

    test("TestForcedFailoverToAClusterThatWouldNeverHearOfItIsRefusedNamingTheMissingConnection, and made on a cluster it pulls from it reaches every one", async () => {
      const force = (x: TestCluster) => x.client(WorkflowService).updateNamespace({ namespace: "orders", activeClusterName: "clusterC" });
      const then = "so clusterC would never hear of a failover made on clusterA (the others would name it active, it another, and none would take the namespace's writes): " +
        "make it on clusterC, or on a cluster clusterC pulls from, or connect clusterA and clusterC both ways first; orders stays active in clusterB";
      // A does not know C (before: NOT_FOUND, "cluster clusterC is not known to cluster clusterA").
      await rejects(force(a), Code.FailedPrecondition, `forced failover of namespace orders to clusterC refused: cluster clusterC is not connected to clusterA, ${then}`);
      // A knows C, C does not know A. Before, A took it and B heard it from A; C never did, and named B active while A and B named C.
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(c) });
      const err = await rejects(force(a), Code.FailedPrecondition, "forced failover of namespace orders to clusterC refused: ");
      expect(err.rawMessage).toBe(`forced failover of namespace orders to clusterC refused: cluster clusterC does not know cluster clusterA: connect it there with cluster upsert, ${then}`);
      expect(await activeEverywhere()).toEqual(["clusterB", "clusterB", "clusterB"]);
      // Made on B, which C pulls from, it reaches C, and A through B.
      await force(b);
      for (const x of [a, b, c]) await expectActiveOn(x, "orders", "clusterC", 3n);
      await c.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "on-c", workflowType: "t", taskQueue: "q" });
    });
  });
}
