import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { sql } from "drizzle-orm";
import { RetryableReplicationError } from "../../replication/applier";
import { BackfillService } from "../../src/gen/tern/admin/v1/backfill_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr, connectAll, expectActiveOn, startClusters } from "../failover/mesh";
import { backfillDone, expectSameRuns, runsOf, seedExecutions, T, tern } from "./support";

setDefaultTimeout(180_000);

/** Connects newcomer and every cluster of mesh both ways. */
async function join(newcomer: TestCluster, mesh: TestCluster[]): Promise<void> {
  for (const x of mesh) {
    await x.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(newcomer) });
    await newcomer.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(x) });
  }
}

for (const store of await testStores()) {
  describe(`backfill on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    const others: TestCluster[] = [];
    // Stopped servers whose data a restarted server took over: their data goes once it stopped.
    const dataOwners: TestCluster[] = [];
    const wf = (x: TestCluster) => x.client(WorkflowService);
    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [{}, {}, {}]);
      await connectAll([a, b]);
    });
    afterAll(async () => {
      await Promise.all([a, b, c, ...others].map((x) => x.destroy()));
      for (const x of dataOwners) await x.destroy();
    });

    test("TestThousandExecutionsReachClusterCAddedLater", async () => {
      await wf(a).registerNamespace({ namespace: "big", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await expectActiveOn(b, "big", "clusterA", 1n);
      let t0 = Date.now();
      await seedExecutions(a, "big", 1000);
      const seeded = Date.now() - t0;
      await join(c, [a, b]);
      t0 = Date.now();
      expect((await tern(a, "operator", "namespace", "update", "-n", "big", "--cluster", "clusterA", "--cluster", "clusterB", "--cluster", "clusterC")).code).toBe(0);
      // New writes flow through normal replication while the backfill runs.
      await wf(a).startWorkflowExecution({ namespace: "big", workflowId: "during-backfill", ...T });
      const job = await backfillDone(c, "big", "clusterA");
      const backfilled = Date.now() - t0;
      expect(job.total).toBeGreaterThanOrEqual(1010n);
      const runs = await eventually(() => expectSameRuns(a, c, "big"), { timeout: 20_000 });
      expect(runs).toBe(1011); // 1000 first runs, 10 second runs, 1 started during the backfill
      await eventually(() => expectSameRuns(a, b, "big", 200));
      const status = await tern(c, "operator", "namespace", "backfill-status", "-n", "big");
      expect(status.out).toMatch(/clusterA\s+DONE\s+(\d+)\/\1/);
      expect((await tern(c, "operator", "namespace", "describe", "-n", "big")).out).toMatch(/Backfill from clusterA: DONE (\d+)\/\1/);
      console.log(`[${store}] seeded 1000 executions in ${seeded} ms; backfill to clusterC done in ${backfilled} ms`);
    });

    test("TestBackfillResumesAfterRestartMidway", async () => {
      // Cluster D fails every backfill apply after 300 runs, as a database that cannot take them
      // (not the runs' fault): the job is stuck midway, RUNNING.
      let applied = 0;
      const beforeCommit = (op: string) => {
        if (op === "BackfillHistory" && ++applied > 300) throw new RetryableReplicationError("injected: backfill apply refused");
      };
      const d1 = await startTestCluster({ store, name: "clusterD", initialFailoverVersion: 4, serverOptions: { beforeCommit } });
      await join(d1, [a, b, c]);
      await wf(a).updateNamespace({ namespace: "big", clusters: ["clusterA", "clusterB", "clusterC", "clusterD"] });
      const midway = await eventually(async () => {
        const job = (await d1.client(BackfillService).getBackfillStatus({ namespace: "big" })).jobs[0];
        expect(job?.status).toBe("RUNNING");
        expect(job!.lastError).toContain("injected");
        expect(job!.done).toBeGreaterThan(0n);
        return job!;
      }, { timeout: 30_000, interval: 50 });
      expect(midway.done).toBeLessThan(1011n);
      await d1.stop();
      dataOwners.push(d1);
      const d = await startTestCluster({ store, name: "clusterD", initialFailoverVersion: 4, dataLocation: d1.dataLocation });
      others.push(d);
      const job = await backfillDone(d, "big", "clusterA");
      // The same job went on (not restarted from scratch) and walked every run once.
      expect(job.startedTime).toEqual(midway.startedTime);
      expect(await expectSameRuns(a, d, "big")).toBe((await runsOf(a, "big")).length);
    });

    test("TestPromoteLocalToGlobalThenAddedClusterGetsExistingExecutions", async () => {
      await wf(a).registerNamespace({ namespace: "local-first" });
      await seedExecutions(a, "local-first", 30, "old");
      const promoted = await tern(a, "operator", "namespace", "update", "-n", "local-first", "--promote-global");
      expect(promoted.code).toBe(0);
      const ns = (await wf(a).describeNamespace({ namespace: "local-first" })).namespace!;
      expect(ns.isGlobalNamespace).toBe(true);
      expect(ns.failoverVersion).toBe(1n);
      expect(ns.replicationConfig!.clusters).toEqual(["clusterA"]);
      // Existing executions keep working and new writes are replicated from now on.
      await wf(a).signalWorkflowExecution({ namespace: "local-first", workflowExecution: { workflowId: "old-0001" }, signalName: "after-promote" });
      await wf(a).startWorkflowExecution({ namespace: "local-first", workflowId: "new-after-promote", ...T });
      expect((await tern(a, "operator", "namespace", "update", "-n", "local-first", "--cluster", "clusterA", "--cluster", "clusterB")).code).toBe(0);
      await expectActiveOn(b, "local-first", "clusterA", 1n);
      await backfillDone(b, "local-first", "clusterA");
      await wf(a).signalWorkflowExecution({ namespace: "local-first", workflowExecution: { workflowId: "old-0002" }, signalName: "after-join" });
      expect(await eventually(() => expectSameRuns(a, b, "local-first", 1))).toBe(31 + 1);
    });

    test("TestOperatorStartsBackfillForAClusterThatJoinedWithoutOne", async () => {
      // As if B had joined before joining started backfills: no job, and executions missing.
      const db = b.server.database.db;
      const ns = (await wf(b).describeNamespace({ namespace: "local-first" })).namespace!.namespaceInfo!.id;
      await db.execute(sql`delete from backfill_jobs where namespace_id = ${ns}`);
      for (const table of ["history_events", "request_ids", "executions"]) {
        await db.execute(sql`delete from ${sql.identifier(table)} where namespace_id = ${ns} and workflow_id between 'old-0005' and 'old-0014'`);
      }
      expect((await runsOf(b, "local-first")).length).toBe(32 - 10);
      const refused = await tern(a, "operator", "namespace", "backfill", "local-first");
      expect([refused.code, refused.err]).toEqual([1, expect.stringContaining("cannot backfill namespace local-first from itself")]);
      const unknown = await tern(b, "operator", "namespace", "backfill", "local-first", "--from", "clusterC");
      expect([unknown.code, unknown.err]).toEqual([1, expect.stringContaining("does not list cluster clusterC")]);
      const started = await tern(b, "operator", "namespace", "backfill", "local-first");
      expect([started.code, started.out]).toEqual([0, "Backfill of namespace local-first from clusterA started\n"]);
      await backfillDone(b, "local-first", "clusterA");
      expect(await eventually(() => expectSameRuns(a, b, "local-first", 1))).toBe(32);
    });
  });
}
