import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { BackfillService } from "../../src/gen/tern/admin/v1/backfill_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { connectAll, expectActiveOn, startClusters } from "../failover/mesh";
import { backfillDone, expectSameRuns, holdingApplies, seedExecutions, tern } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "rejoins";

/**
 * A cluster taken out of a namespace while backfilling it, and added back once another cluster is
 * active: its join backfills from the new active cluster, and the job it left STOPPED is over.
 */
for (const store of await testStores()) {
  describe(`a cluster that joins a namespace again, on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    const held = { on: true };
    const applying = holdingApplies((namespace, workflowId) => held.on && namespace === NS && workflowId === "wf-0003");
    const statuses = async (x: TestCluster) => (await x.client(BackfillService).getBackfillStatus({ namespace: NS })).jobs.map((j) => `${j.sourceCluster} ${j.status}`);
    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [{}, { serverOptions: { replication: { wrapApplier: applying } } }, {}]);
      await connectAll([a, b, c]);
    });
    afterAll(async () => {
      await Promise.all([a, b, c].map((x) => x?.destroy()));
    });

    test("TestAClusterAddedBackFromAnotherActiveClusterLeavesItsStoppedJobBehind", async () => {
      await a.client(WorkflowService).registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: ["clusterA", "clusterC"] });
      await seedExecutions(a, NS, 10);
      await a.client(WorkflowService).updateNamespace({ namespace: NS, clusters: ["clusterA", "clusterB", "clusterC"] });
      await eventually(async () => expect((await b.client(BackfillService).getBackfillStatus({ namespace: NS })).jobs[0]?.lastError).toContain("injected: wf-0003 waits"));
      await a.client(WorkflowService).updateNamespace({ namespace: NS, clusters: ["clusterA", "clusterC"] });
      await eventually(async () => expect(await statuses(b)).toEqual(["clusterA STOPPED"]));
      expect((await tern(a, "operator", "namespace", "failover", "-n", NS, "--to", "clusterC")).code).toBe(0);
      await expectActiveOn(c, NS, "clusterC", 3n);
      held.on = false;
      // Added back by C, B backfills from C, which holds every run: the job from A it left is over.
      await c.client(WorkflowService).updateNamespace({ namespace: NS, clusters: ["clusterA", "clusterB", "clusterC"] });
      await backfillDone(b, NS, "clusterC");
      expect(await statuses(b)).toEqual(["clusterC DONE"]);
      // Left STOPPED, it held every failover to B back, for a job nobody would start again.
      const failover = await tern(c, "operator", "namespace", "failover", "-n", NS, "--to", "clusterB");
      expect([failover.code, failover.err]).toEqual([0, ""]);
      await expectActiveOn(b, NS, "clusterB", 102n);
      expect(await eventually(() => expectSameRuns(c, b, NS, 1))).toBe(11);
    });
  });
}
