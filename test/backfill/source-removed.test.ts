import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { BackfillService } from "../../src/gen/tern/admin/v1/backfill_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { connectAll, expectActiveOn, startClusters } from "../failover/mesh";
import { holdingApplies, runsOf, seedExecutions, tern } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "retired";

/**
 * A backfill whose source is retired (taken out of the namespace, then removed as a remote): it
 * stood RUNNING for good, its status advising to connect the source again; then it went on
 * fetching from the source once taken out, until removed. It ends STOPPED as the source is taken out.
 */
for (const store of await testStores()) {
  describe(`a backfill from a cluster removed as a remote, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    /** B's applies of wf-0003 fail as a busy database's would: its backfill stays RUNNING at that page. */
    const applying = holdingApplies((_namespace, workflowId) => workflowId === "wf-0003");
    const jobOn = async (x: TestCluster) => (await x.client(BackfillService).getBackfillStatus({ namespace: NS })).jobs[0];
    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, { serverOptions: { replication: { wrapApplier: applying } } }]);
      await connectAll([a, b]);
    });
    afterAll(async () => {
      await Promise.all([a, b].map((x) => x?.destroy()));
    });

    test("TestBackfillFromARemovedClusterEndsStoppedSayingWhatToDo", async () => {
      await a.client(WorkflowService).registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: ["clusterA"] });
      await seedExecutions(a, NS, 10);
      await a.client(WorkflowService).updateNamespace({ namespace: NS, clusters: ["clusterA", "clusterB"] });
      await eventually(async () => expect((await jobOn(b))?.lastError).toContain("injected: wf-0003 waits"));
      // A is retired: B made active (its loss taken), A taken out of the namespace, then removed on B.
      expect((await tern(b, "operator", "namespace", "update", "-n", NS, "--active-cluster", "clusterB", "--allow-unfinished-backfill")).code).toBe(0);
      await expectActiveOn(b, NS, "clusterB", 2n);
      expect((await tern(b, "operator", "namespace", "update", "-n", NS, "--cluster", "clusterB")).code).toBe(0);
      // Before: RUNNING, fetching from a cluster the namespace no longer lists, until A was removed as a remote.
      const why = "stopped: its source cluster clusterA was taken out of namespace retired (its clusters now: clusterB); to bring what this cluster lacks, start a backfill from one of them (backfill --from)";
      expect([(await jobOn(b))?.status, (await jobOn(b))?.lastError]).toEqual(["STOPPED", why]);
      expect((await tern(b, "operator", "namespace", "backfill-status", NS)).out).toContain(why);
      expect((await tern(b, "operator", "cluster", "remove", "--name", "clusterA")).code).toBe(0);
      const job = await jobOn(b);
      expect([job?.status, job?.lastError]).toEqual(["STOPPED", why]);
      expect((await tern(b, "operator", "namespace", "backfill-status", NS)).out).not.toContain("add it with cluster upsert");
    });
  });

  describe(`a backfill from a cluster another cluster takes out of the namespace, on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    /** B's applies of wf-0003 wait: its backfills stay RUNNING at that page. */
    const applying = holdingApplies((_namespace, workflowId) => workflowId === "wf-0003");
    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [{}, { serverOptions: { replication: { wrapApplier: applying } } }, {}]);
      await connectAll([a, b, c]);
    });
    afterAll(async () => {
      await Promise.all([a, b, c].map((x) => x?.destroy()));
    });

    test("TestBackfillFromAClusterTakenOutOnTheActiveClusterEndsStopped", async () => {
      const ns = "thinned";
      await a.client(WorkflowService).registerNamespace({ namespace: ns, isGlobalNamespace: true, clusters: ["clusterA", "clusterC"] });
      await seedExecutions(a, ns, 10);
      await eventually(async () => expect((await runsOf(c, ns)).length).toBe((await runsOf(a, ns)).length));
      await a.client(WorkflowService).updateNamespace({ namespace: ns, clusters: ["clusterA", "clusterB", "clusterC"] });
      const jobsOn = async () => (await b.client(BackfillService).getBackfillStatus({ namespace: ns })).jobs.map((j) => [j.sourceCluster, j.status, j.lastError]);
      await eventually(async () => expect((await jobsOn())[0]?.[2]).toContain("injected: wf-0003 waits"));
      expect((await tern(b, "operator", "namespace", "backfill", ns, "--from", "clusterC")).code).toBe(0);
      await eventually(async () => expect((await jobsOn())[1]?.[2]).toContain("injected: wf-0003 waits"));
      // A takes C out; B hears it through namespace replication.
      await a.client(WorkflowService).updateNamespace({ namespace: ns, clusters: ["clusterA", "clusterB"] });
      const why = "stopped: its source cluster clusterC was taken out of namespace thinned (its clusters now: clusterA, clusterB); to bring what this cluster lacks, start a backfill from one of them (backfill --from)";
      // Before: RUNNING, fetching from C for as long as C stayed a remote of B.
      await eventually(async () => expect((await jobsOn())[1]).toEqual(["clusterC", "STOPPED", why]));
      expect((await jobsOn())[0]?.slice(0, 2)).toEqual(["clusterA", "RUNNING"]);
    });
  });
}
