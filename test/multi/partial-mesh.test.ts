import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { fileURLToPath } from "node:url";
import { Code } from "@connectrpc/connect";
import { createReplicationCleanup } from "../../replication/cleanup";
import { ACTIVE_CLUSTER_HEADER } from "../../src/errors";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { replicationTasks } from "../../src/persistence/schema";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { addr, eventuallyOn, expectActiveOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

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
        "cluster clusterB does not know cluster clusterC, one of the namespace's clusters, so clusterC would take nothing clusterB writes: connect them both ways; fix that first, or fail over forced; orders stays active in clusterA",
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
      expect(Date.now() - started).toBeLessThan(2_000);
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
}
