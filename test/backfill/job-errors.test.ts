import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { sql } from "drizzle-orm";
import { RetryableReplicationError, type HistoryApplier } from "../../replication/applier";
import { startBackfillJob, stopBackfillJobs } from "../../replication/backfill-jobs";
import { createLogger } from "../../src/observability/log";
import { BackfillService } from "../../src/gen/tern/admin/v1/backfill_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { connectAll, expectActiveOn, startClusters } from "../failover/mesh";
import { setLink } from "../conflict/support";
import { backfillDone, expectSameRuns, runsOf, seedExecutions, tern } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** What an operator meets when a backfill cannot do its work: the job says so, and the others go on. */
for (const store of await testStores()) {
  describe(`backfill jobs that meet errors, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    const wf = (x: TestCluster) => x.client(WorkflowService);
    /** Once namespace is set, B's first apply of one of its runs starts its backfill again, in the apply's transaction. */
    const startAgain = { namespace: "", done: false };
    /** Once namespace is set, B's first apply of one of its runs stops its backfill, in the apply's transaction. */
    const stopDuring = { namespace: "", done: false };
    const bLog: { msg: string; namespace?: string }[] = [];
    /** Workflow ids whose applies on B fail, as a run's own failure would; once: the first only. */
    const refused = new Set<string>();
    const refusedOnce = new Set<string>();
    /** Workflow ids whose applies on B fail as a busy database's would (retried, not the run's fault). */
    const waiting = new Set<string>();
    const applying = (applier: HistoryApplier): HistoryApplier => ({
      ...applier,
      async applyTask(tx, ns, task, fetchRaw) {
        if (refused.has(task.workflowId) || refusedOnce.delete(task.workflowId)) throw new Error(`injected: ${task.workflowId} cannot be applied`);
        if (waiting.has(task.workflowId)) throw new RetryableReplicationError(`injected: ${task.workflowId} waits`);
        if (ns.name === startAgain.namespace && !startAgain.done) {
          startAgain.done = true;
          await startBackfillJob(tx, { namespaceId: ns.id, sourceCluster: "clusterA" }, new Date());
        }
        if (ns.name === stopDuring.namespace && !stopDuring.done) {
          stopDuring.done = true;
          await stopBackfillJobs(tx, { namespaceId: ns.id }, "stopped: injected", new Date());
        }
        return applier.applyTask(tx, ns, task, fetchRaw);
      },
    });
    const jobOn = async (x: TestCluster, namespace: string) => (await x.client(BackfillService).getBackfillStatus({ namespace })).jobs[0];
    beforeAll(async () => {
      const log = createLogger({ write: (l) => bLog.push(JSON.parse(l)) });
      [a, b] = await startClusters(store, [{}, { serverOptions: { replication: { wrapApplier: applying }, log } }]);
      await connectAll([a, b]);
    });
    afterAll(async () => {
      await Promise.all([a, b].map((x) => x?.destroy()));
    });

    test("TestBackfillFromASourceThatLacksTheNamespaceFails", async () => {
      await wf(a).registerNamespace({ namespace: "gone", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await seedExecutions(a, "gone", 5);
      await expectActiveOn(b, "gone", "clusterA", 1n);
      await eventually(async () => expect((await runsOf(b, "gone")).length).toBe(6));
      // Deleted on its active cluster only: B keeps it, and a backfill from A finds nothing there.
      await a.client(OperatorService).deleteNamespace({ namespace: "gone" });
      const started = await tern(b, "operator", "namespace", "backfill", "gone", "--from", "clusterA");
      expect([started.code, started.out]).toEqual([0, "Backfill of namespace gone from clusterA started\n"]);
      const job = await eventually(async () => {
        const job = await jobOn(b, "gone");
        expect(job?.status).toBe("FAILED");
        return job!;
      });
      expect(job.lastError).toContain("cluster clusterA does not hold namespace gone");
      expect((await tern(b, "operator", "namespace", "backfill-status", "gone")).out).toMatch(/clusterA\s+FAILED\s+0\/0 .*does not hold namespace gone/);
    });

    test("TestNamespaceDeletedAndCreatedAgainShowsNoJobsOfTheDeletedOne", async () => {
      await wf(a).registerNamespace({ namespace: "reborn", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await seedExecutions(a, "reborn", 5, "rb");
      await expectActiveOn(b, "reborn", "clusterA", 1n);
      const namespaceId = (await wf(b).describeNamespace({ namespace: "reborn" })).namespace!.namespaceInfo!.id;
      // A job from another member, as one from a third cluster since removed would stand.
      await b.server.database.db.transaction((tx) => startBackfillJob(tx, { namespaceId, sourceCluster: "clusterC" }, new Date()));
      // Taken out of it, B may delete its copy, and its jobs go with it.
      await wf(a).updateNamespace({ namespace: "reborn", clusters: ["clusterA"] });
      await eventually(async () => expect((await b.client(BackfillService).getBackfillStatus({ namespace: "reborn" })).jobs.map((j) => j.status)).toEqual(["STOPPED"]));
      await b.client(OperatorService).deleteNamespace({ namespace: "reborn" });
      const left = await b.server.database.db.execute(sql`select source_cluster from backfill_jobs where namespace_id = ${namespaceId}`);
      expect((left as { rows?: unknown[] }).rows ?? left).toEqual([]);
      // Added back, B creates it again, of the same id: its status shows the new join's job alone.
      await wf(a).updateNamespace({ namespace: "reborn", clusters: ["clusterA", "clusterB"] });
      await backfillDone(b, "reborn", "clusterA");
      const status = await tern(b, "operator", "namespace", "backfill-status", "reborn");
      expect(status.out).toMatch(/^SOURCE .*\nclusterA\s+DONE\s+6\/6 .*\n$/);
      expect(await expectSameRuns(a, b, "reborn", 1)).toBe(6);
    });

    test("TestBackfillStartedAgainWhileRunningEndsDoneWithoutAnError", async () => {
      await wf(a).registerNamespace({ namespace: "twice", isGlobalNamespace: true, clusters: ["clusterA"] });
      await seedExecutions(a, "twice", 20);
      // B joins: its job starts, and is started again while its first page is applied.
      startAgain.namespace = "twice";
      await wf(a).updateNamespace({ namespace: "twice", clusters: ["clusterA", "clusterB"] });
      const job = await backfillDone(b, "twice", "clusterA");
      expect(startAgain.done).toBe(true);
      // The runner of the first start saw the job change underneath: no error of its own is left in the second's status.
      expect([job.done, job.lastError]).toEqual([21n, ""]);
      expect(await expectSameRuns(a, b, "twice", 1)).toBe(21);
    });

    test("TestBackfillStatusSaysAJobIsPausedByADisabledConnection", async () => {
      await setLink(a, b, false);
      try {
        expect((await tern(b, "operator", "namespace", "backfill", "twice")).code).toBe(0);
        const job = await jobOn(b, "twice");
        expect([job?.status, job?.lastError]).toEqual(["RUNNING", "paused: the connection to cluster clusterA is disabled here (it goes on once enabled)"]);
        expect((await tern(b, "operator", "namespace", "backfill-status", "twice")).out).toMatch(/clusterA\s+RUNNING\s+0\/0 .*paused: the connection to cluster clusterA is disabled here/);
      } finally {
        await setLink(a, b, true);
      }
      const done = await backfillDone(b, "twice", "clusterA");
      expect([done.done, done.lastError]).toEqual([21n, ""]);
    });

    test("TestBackfillThatRecoveredFromAnErrorEndsDoneWithoutIt", async () => {
      await wf(a).registerNamespace({ namespace: "recovers", isGlobalNamespace: true, clusters: ["clusterA"] });
      await seedExecutions(a, "recovers", 20, "rec");
      waiting.add("rec-0003");
      await wf(a).updateNamespace({ namespace: "recovers", clusters: ["clusterA", "clusterB"] });
      // Held at its page, the job says why, as an error it retries.
      await eventually(async () => {
        const job = await jobOn(b, "recovers");
        expect([job?.status, job?.lastError]).toEqual(["RUNNING", "retrying: injected: rec-0003 waits"]);
      });
      waiting.clear();
      // Once the page went through, the error is over: a DONE job showed it as its last error.
      const job = await backfillDone(b, "recovers", "clusterA");
      expect([job.done, job.lastError]).toEqual([21n, ""]);
      expect((await tern(b, "operator", "namespace", "backfill-status", "recovers")).out).not.toContain("injected");
      expect(await expectSameRuns(a, b, "recovers", 1)).toBe(21);
    });

    test("TestBackfillStartedWhileRunningIsRefusedUnlessRestarted", async () => {
      await wf(a).registerNamespace({ namespace: "again", isGlobalNamespace: true, clusters: ["clusterA"] });
      await seedExecutions(a, "again", 20, "ag");
      waiting.add("ag-0003");
      await wf(a).updateNamespace({ namespace: "again", clusters: ["clusterA", "clusterB"] });
      const held = await eventually(async () => {
        const job = await jobOn(b, "again");
        expect([job?.status, job?.total, job?.lastError]).toEqual(["RUNNING", 21n, "retrying: injected: ag-0003 waits"]);
        return job!;
      });
      const startedAt = timestampDate(held.startedTime!);
      // Started again unasked, the job lost its progress: it is refused, saying how far the job is.
      const refused = await tern(b, "operator", "namespace", "backfill", "again");
      expect([refused.code, refused.out]).toEqual([1, ""]);
      expect(refused.err).toContain(
        `the backfill of namespace again from clusterA is RUNNING here already (0/21 runs, started ${startedAt.toISOString()}; retrying: injected: ag-0003 waits): ` +
          "it goes on by itself (see backfill-status); to start it again from the beginning, its progress lost, give --restart",
      );
      expect((await jobOn(b, "again"))?.startedTime).toEqual(held.startedTime);
      // Asked to, it starts again from the beginning, and says what it replaced.
      const restarted = await tern(b, "operator", "namespace", "backfill", "again", "--restart");
      expect([restarted.code, restarted.out]).toEqual([0, "Backfill of namespace again from clusterA started again from the beginning (it was RUNNING at 0/21 runs)\n"]);
      expect(timestampDate((await jobOn(b, "again"))!.startedTime!).getTime()).toBeGreaterThan(startedAt.getTime());
      waiting.delete("ag-0003");
      await backfillDone(b, "again", "clusterA");
      // A job that is over starts again without --restart.
      const redone = await tern(b, "operator", "namespace", "backfill", "again");
      expect([redone.code, redone.out]).toEqual([0, "Backfill of namespace again from clusterA started again from the beginning (it was DONE at 21/21 runs)\n"]);
      await backfillDone(b, "again", "clusterA");
      expect(await expectSameRuns(a, b, "again", 1)).toBe(21);
    });

    test("TestBackfillStopsWhenThisClusterIsTakenOutOfTheNamespace", async () => {
      await wf(a).registerNamespace({ namespace: "leaves", isGlobalNamespace: true, clusters: ["clusterA"] });
      await seedExecutions(a, "leaves", 20, "lv");
      waiting.add("lv-0003");
      await wf(a).updateNamespace({ namespace: "leaves", clusters: ["clusterA", "clusterB"] });
      await eventually(async () => expect((await jobOn(b, "leaves"))?.lastError).toContain("injected: lv-0003 waits"));
      // Taken out, B stops bringing runs of a namespace no longer replicated to it, and says why.
      await wf(a).updateNamespace({ namespace: "leaves", clusters: ["clusterA"] });
      const stopped = await eventually(async () => {
        const job = await jobOn(b, "leaves");
        expect(job?.status).toBe("STOPPED");
        return job!;
      });
      expect([stopped.done, stopped.lastError]).toEqual([0n, "stopped: cluster clusterB was taken out of namespace leaves (its clusters now: clusterA); added back, it backfills it again"]);
      expect((await tern(b, "operator", "namespace", "backfill-status", "leaves")).out).toMatch(/clusterA\s+STOPPED\s+0\/21 .*taken out of namespace leaves/);
      // The page it was held at would go through now: the job is not taken up again.
      waiting.clear();
      expect((await tern(b, "operator", "namespace", "backfill", "recovers")).code).toBe(0);
      await backfillDone(b, "recovers", "clusterA");
      expect((await jobOn(b, "leaves"))?.status).toBe("STOPPED");

      // Added back, B backfills the namespace again, from the start.
      await wf(a).updateNamespace({ namespace: "leaves", clusters: ["clusterA", "clusterB"] });
      const again = await backfillDone(b, "leaves", "clusterA");
      expect([again.done, again.lastError]).toEqual([21n, ""]);
      expect(await expectSameRuns(a, b, "leaves", 1)).toBe(21);
    });

    test("TestBackfillStoppedWhileItsPageIsAppliedStaysStopped", async () => {
      await wf(a).registerNamespace({ namespace: "midpage", isGlobalNamespace: true, clusters: ["clusterA"] });
      await seedExecutions(a, "midpage", 20, "mid");
      stopDuring.namespace = "midpage";
      await wf(a).updateNamespace({ namespace: "midpage", clusters: ["clusterA", "clusterB"] });
      // Its page's runs are applied, and the page's record finds the job stopped: it ended DONE over it.
      await eventually(() => expect(bLog.some((l) => l.namespace === "midpage" && ["backfill stopped", "backfill done"].includes(l.msg))).toBe(true));
      expect(stopDuring.done).toBe(true);
      const job = await jobOn(b, "midpage");
      expect([job?.status, job?.lastError]).toEqual(["STOPPED", "stopped: injected"]);
    });

    test("TestFailoverToAClusterJoiningInTheSameUpdateIsRefused", async () => {
      await wf(a).registerNamespace({ namespace: "hasty", isGlobalNamespace: true, clusters: ["clusterA"] });
      await seedExecutions(a, "hasty", 5, "h");
      // Made active as it joined, B held none of the runs, and its join started no backfill (its source would be itself).
      for (const allow of [[], ["--allow-unfinished-backfill"]]) {
        const refused = await tern(a, "operator", "namespace", "update", "-n", "hasty", "--cluster", "clusterA", "--cluster", "clusterB", "--active-cluster", "clusterB", ...allow);
        expect([refused.code, refused.err]).toEqual([1, expect.stringContaining("cluster clusterB is not one of namespace hasty's clusters yet (clusterA): made active as it joins")]);
      }
      const ns = (await wf(a).describeNamespace({ namespace: "hasty" })).namespace!;
      expect([ns.replicationConfig!.activeClusterName, ns.replicationConfig!.clusters, ns.failoverVersion]).toEqual(["clusterA", ["clusterA"], 1n]);
      // Added first, then failed over once its backfill is done, it holds every run.
      await wf(a).updateNamespace({ namespace: "hasty", clusters: ["clusterA", "clusterB"] });
      await backfillDone(b, "hasty", "clusterA");
      expect((await tern(a, "operator", "namespace", "update", "-n", "hasty", "--active-cluster", "clusterB")).code).toBe(0);
      await expectActiveOn(b, "hasty", "clusterB", 2n);
      expect(await expectSameRuns(a, b, "hasty", 1)).toBe(6);
    });

    test("TestBackfillStatusOfALocalNamespaceSaysItIsLocal", async () => {
      await wf(a).registerNamespace({ namespace: "mine" });
      const status = await tern(a, "operator", "namespace", "backfill-status", "mine");
      // It said "no backfill (every execution arrived through replication)" of a namespace never replicated.
      expect([status.code, status.out, status.err]).toEqual([1, "", expect.stringContaining("namespace mine is local: it is not replicated, so nothing is backfilled into it")]);
    });

    test("TestOneRunThatCannotBeBroughtFailsTheJobAfterTheOthers", async () => {
      // A run refused once (as a race with a conflict being settled refuses one) is tried again.
      refusedOnce.add("bad-0001");
      // 253 runs written while the namespace was local (only a backfill brings them): two pages of
      // the source's listing, the bad run in the first.
      await wf(a).registerNamespace({ namespace: "badrun" });
      await seedExecutions(a, "badrun", 250, "bad");
      expect((await tern(a, "operator", "namespace", "update", "-n", "badrun", "--promote-global")).code).toBe(0);
      refused.add("bad-0010");
      await wf(a).updateNamespace({ namespace: "badrun", clusters: ["clusterA", "clusterB"] });
      const job = await eventually(async () => {
        const job = await jobOn(b, "badrun");
        expect(job?.status).toBe("FAILED");
        return job!;
      }, { timeout: 60_000 });
      // Every other run came, and the job names the one that did not.
      expect(job.done).toBe(253n);
      expect(job.lastError).toContain("1 of its runs could not be brought");
      expect(job.lastError).toContain("run bad-0010 ");
      expect(job.lastError).toContain("injected: bad-0010 cannot be applied");
      expect(refusedOnce.size).toBe(0);
      const onA = (await runsOf(a, "badrun")).filter((r) => r.workflow_id !== "bad-0010");
      expect(await runsOf(b, "badrun")).toEqual(onA);
      expect((await tern(b, "operator", "namespace", "backfill-status", "badrun")).out).toMatch(/clusterA\s+FAILED\s+253\/253 .*bad-0010/);

      // Once the run can be applied, starting the job again brings it, and the job ends DONE.
      refused.clear();
      expect((await tern(b, "operator", "namespace", "backfill", "badrun")).code).toBe(0);
      const again = await backfillDone(b, "badrun", "clusterA");
      expect(again.lastError).toBe("");
      expect(await expectSameRuns(a, b, "badrun", 1)).toBe(253);
    });
  });
}
