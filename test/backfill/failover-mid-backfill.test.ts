import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { startBackfillJob } from "../../replication/backfill-jobs";
import { BackfillService } from "../../src/gen/tern/admin/v1/backfill_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { connectAll, expectActiveOn, startClusters } from "../failover/mesh";
import { backfillDone, expectSameRuns, holdingApplies, runsOf, seedExecutions, T, tern } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "joining";
const FORCED = "forced";

/**
 * A failover to a cluster whose backfill of the namespace has not finished (DESIGN.md section 5:
 * no acknowledged write is lost): made active, B answered NOT_FOUND for the runs it had not
 * brought, and a start of one of their workflow ids there made a second run, which won, so the
 * open run A had acknowledged was terminated as a zombie once the backfill brought it. Graceful,
 * it is refused; forced, it is refused unless the operator allows it (the emergency path).
 */
for (const store of await testStores()) {
  describe(`a failover to a cluster still backfilling, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    const wf = (x: TestCluster) => x.client(WorkflowService);
    /** Namespaces whose wf-0010 B's applies fail as a busy database's would: its backfill stays RUNNING at that page. */
    const stuck = new Set([NS, FORCED]);
    const applying = holdingApplies((namespace, workflowId) => stuck.has(namespace) && workflowId === "wf-0010");
    /** namespace, its 31 runs written on A while it was local (only a backfill brings them), joined by B, whose backfill of it is held at wf-0010. */
    async function joinedStuck(namespace: string): Promise<void> {
      await wf(a).registerNamespace({ namespace });
      await seedExecutions(a, namespace, 30);
      expect((await tern(a, "operator", "namespace", "update", "-n", namespace, "--promote-global")).code).toBe(0);
      expect((await tern(a, "operator", "namespace", "update", "-n", namespace, "--cluster", "clusterA", "--cluster", "clusterB")).code).toBe(0);
      await expectActiveOn(b, namespace, "clusterA", 1n);
      await eventually(async () => {
        const job = (await b.client(BackfillService).getBackfillStatus({ namespace })).jobs[0];
        expect([job?.status, job?.total, job?.lastError]).toEqual(["RUNNING", 31n, expect.stringContaining("injected")]);
      }, { timeout: 30_000 });
    }
    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, { serverOptions: { replication: { wrapApplier: applying } } }]);
      await connectAll([a, b]);
    });
    afterAll(async () => {
      await Promise.all([a, b].map((x) => x?.destroy()));
    });

    test("TestGracefulFailoverToAClusterStillBackfillingIsRefused", async () => {
      await joinedStuck(NS);
      const open = (await runsOf(a, NS)).find((r) => r.workflow_id === "wf-0010")!;
      expect(open.status).toBe("RUNNING");

      const refused = await tern(a, "operator", "namespace", "failover", "-n", NS, "--to", "clusterB");
      expect(refused.code).toBe(1);
      // Held at its first page, the job says how many runs it has to bring (it said 0/0).
      expect(refused.err).toContain("cluster clusterB has not finished backfilling namespace joining from clusterA (RUNNING, 0/31 runs");
      // Its advice is what goes through: a forced failover to B is refused too, unless it takes the loss.
      expect(refused.err).toContain(
        "; wait for its backfill to be DONE, or, if its source is gone for good, fail over forced taking the loss " +
          "(operator namespace update -n joining --active-cluster clusterB --allow-unfinished-backfill); joining stays active in clusterA",
      );
      await expectActiveOn(a, NS, "clusterA", 1n);

      // Once the backfill is done, the failover goes through, and the run A acknowledged is B's. A
      // job from a cluster the namespace does not list (taken out, and gone) holds it back no more.
      stuck.delete(NS);
      await backfillDone(b, NS, "clusterA");
      const namespaceId = (await wf(b).describeNamespace({ namespace: NS })).namespace!.namespaceInfo!.id;
      await b.server.database.db.transaction((tx) => startBackfillJob(tx, { namespaceId, sourceCluster: "clusterZ" }, new Date()));
      expect((await tern(a, "operator", "namespace", "failover", "-n", NS, "--to", "clusterB")).code).toBe(0);
      await expectActiveOn(b, NS, "clusterB", 2n);
      const again = wf(b).startWorkflowExecution({ namespace: NS, workflowId: "wf-0010", ...T });
      await expect(again).rejects.toThrow(`already running (run ${open.run_id})`);
      expect(await eventually(() => expectSameRuns(a, b, NS, 1))).toBe(31);
    });

    test("TestForcedFailoverToAClusterStillBackfillingIsRefusedUnlessAllowed", async () => {
      await joinedStuck(FORCED);

      // Forced on B itself (A as if down), and on A (which asks B): each refuses, saying how far B is and how to force it anyway.
      for (const asked of [b, a]) {
        const refused = await tern(asked, "operator", "namespace", "update", "-n", FORCED, "--active-cluster", "clusterB");
        expect(refused.code).toBe(1);
        expect(refused.err).toContain("cluster clusterB has not finished backfilling namespace forced from clusterA (RUNNING, 0/31 runs; see backfill-status on clusterB)");
        expect(refused.err).toContain("force the failover with --allow-unfinished-backfill");
        expect(refused.err).toContain("namespace forced stays active in clusterA");
      }
      await expectActiveOn(a, FORCED, "clusterA", 1n);
      await expectActiveOn(b, FORCED, "clusterA", 1n);
      const alone = await tern(b, "operator", "namespace", "update", "-n", FORCED, "--allow-unfinished-backfill", "--description", "x");
      expect([alone.code, alone.err]).toEqual([2, expect.stringContaining("--allow-unfinished-backfill goes with --active-cluster")]);

      // Allowed, it is made: the emergency path stays open when the source is gone for good.
      const forced = await tern(b, "operator", "namespace", "update", "-n", FORCED, "--active-cluster", "clusterB", "--allow-unfinished-backfill");
      expect([forced.code, forced.err]).toEqual([0, ""]);
      await expectActiveOn(b, FORCED, "clusterB", 2n);
      await expectActiveOn(a, FORCED, "clusterB", 2n);
      // The source still answering, the backfill goes on and brings what B lacked.
      stuck.delete(FORCED);
      await backfillDone(b, FORCED, "clusterA");
      expect(await eventually(() => expectSameRuns(a, b, FORCED, 1))).toBe(31);
    });
  });
}
