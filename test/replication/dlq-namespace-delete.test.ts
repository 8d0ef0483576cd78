import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { eq } from "drizzle-orm";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { runStatement } from "../../src/persistence/raw-statements";
import { executions, historyEvents, replicationDlq } from "../../src/persistence/schema";
import { connectAll, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { faultyApplier, holdingOpen, mergeGate, type MergeGate } from "./dlq-faults";
import { globalNamespace } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** A namespace deleted on a cluster it left, while that cluster's replication DLQ holds entries of it. */
for (const store of await testStores()) {
  describe(`DLQ entries of a deleted namespace on ${store} (clusterA -> clusterB, one shard)`, () => {
    let a: TestCluster, b: TestCluster;
    const poisoned = new Set<string>();
    const gates = new Map<string, MergeGate>();
    const bLog: { msg: string }[] = [];
    const lockWaits = async () =>
      (await runStatement(b.server.database.db, "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'", []))[0]!.n;
    const entriesOf = (namespaceId: string) => b.server.database.db.select().from(replicationDlq).where(eq(replicationDlq.namespaceId, namespaceId));

    beforeAll(async () => {
      [a, b] = await startClusters(store, [
        { shards: 1 },
        {
          shards: 1,
          serverOptions: {
            // The periodic read of replication_dlq_size would also wait on the table lock withTheGaugeReadCancelled takes, and be cancelled with the read it is after.
            replication: { retry: { attempts: 2, backoffMs: 5 }, wrapApplier: faultyApplier(poisoned, new Map(), new Map(), gates), dlqGaugeIntervalMs: 3_600_000 },
            log: createLogger({ write: (l) => bLog.push(JSON.parse(l)) }),
          },
        },
      ]);
      await connectAll([a, b]);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    /** A global namespace of A and B whose run workflowId has `entries` DLQ entries on B (the fault gone), then B taken out of it on A and heard so on B. */
    async function leftWithEntries(name: string, workflowId: string, entries: number): Promise<string> {
      const nsId = await globalNamespace(a, b, name);
      poisoned.add(workflowId);
      const wf = a.client(WorkflowService);
      await wf.startWorkflowExecution({ namespace: name, workflowId, workflowType: "Pay", taskQueue: "q" });
      for (let i = 1; i < entries; i++) await wf.signalWorkflowExecution({ namespace: name, workflowExecution: { workflowId }, signalName: `s${i}` });
      await eventually(async () => expect(await entriesOf(nsId)).toHaveLength(entries), { timeout: 20_000 });
      poisoned.delete(workflowId);
      await wf.updateNamespace({ namespace: name, clusters: ["clusterA"] });
      await eventually(async () => expect((await b.client(WorkflowService).describeNamespace({ namespace: name })).namespace?.replicationConfig?.clusters).toEqual(["clusterA"]));
      return nsId;
    }

    test("TestDeleteNamespaceTakesItsDlqEntries: list and merge find none of it, and a merge of one left by an older delete says the namespace is gone", async () => {
      const nsId = await leftWithEntries("gone", "w1", 2);
      const [kept] = await entriesOf(nsId);
      await b.client(OperatorService).deleteNamespace({ namespace: "gone" });
      // Before: both stayed, listed and merged as the namespace's ("... is not known on clusterB yet; retrying").
      expect(await entriesOf(nsId)).toEqual([]);
      expect((await b.client(AdminService).listReplicationDlq({})).entries).toEqual([]);
      expect(b.server.metrics.render()).toContain('replication_dlq_size{source_cluster="clusterA"} 0');
      expect(await b.client(AdminService).mergeReplicationDlq({})).toMatchObject({ merged: 0n, failed: [] });

      // An entry a delete left before it took them: the merge says why it cannot merge it, and nothing retries it.
      await b.server.database.db.insert(replicationDlq).values(kept!);
      const merged = await b.client(AdminService).mergeReplicationDlq({});
      const why = `namespace ${nsId} is not on this cluster (deleted here): there is nothing to merge the entry into; purge it to drop it`;
      expect([merged.merged, merged.failed.map((e) => e.lastError)]).toEqual([0n, [why]]);
      expect((await entriesOf(nsId)).map((e) => e.lastError)).toEqual([why]);
      await b.client(AdminService).purgeReplicationDlq({ sourceCluster: "clusterA" });
    });

    // PGlite runs one transaction at a time: the delete cannot start while the merge's is open.
    test.skipIf(store !== "postgres")("TestDeleteNamespaceWhileAMergeAppliesItsEntry: the delete waits for the merge and takes the run it applied", async () => {
      const nsId = await leftWithEntries("racing", "w2", 1);
      // The merge's transaction is open, its apply to come.
      const gate = mergeGate(true);
      gates.set("w2", gate);
      const merging = b.client(AdminService).mergeReplicationDlq({});
      await gate.held;
      const deleting = b.client(OperatorService).deleteNamespace({ namespace: "racing" });
      await eventually(async () => expect(await lockWaits()).toBe(1));
      gate.release();
      expect((await merging).merged).toBe(1n);
      expect((await deleting).deletedExecutions).toBe(1n);
      // Before: the delete went past the runs while the merge was applying, which committed w2's run after it, of no namespace.
      const db = b.server.database.db;
      expect([await db.select().from(executions).where(eq(executions.namespaceId, nsId)), await db.select().from(historyEvents).where(eq(historyEvents.namespaceId, nsId))]).toEqual([[], []]);
      expect(await entriesOf(nsId)).toEqual([]);
    });

    /** Holds a transaction of B's pool open (holdingOpen). */
    const holding = (hold: string, params: unknown[]) => holdingOpen(b.server.database.db, hold, params);

    /**
     * Runs call (a delete or purge of nsId's entries) held at the entries' row, with a table lock
     * queued behind it, so that replication_dlq_size's read after its commit waits; that read is
     * cancelled (the blip). What call answered, or its error's message; checks the read was logged.
     */
    async function withTheGaugeReadCancelled<T>(nsId: string, call: () => Promise<T>): Promise<T | string> {
      const logged = bLog.filter((l) => l.msg === "reading the replication DLQ size failed").length;
      const row = holding("select 1 from replication_dlq where namespace_id = $1 for update", [nsId]);
      let table: ReturnType<typeof holding> | undefined;
      try {
        await row.taken;
        const answer = call().catch((e: Error) => e.message);
        await eventually(async () => expect(await lockWaits()).toBe(1));
        table = holding("lock table replication_dlq in access exclusive mode", []);
        await eventually(async () => expect(await lockWaits()).toBe(2));
        row.release();
        await table.taken;
        const cancelled = async () =>
          (await runStatement(b.server.database.db, `select pg_cancel_backend(pid) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and query like '%from "replication_dlq" group by%'`, [])).length;
        await eventually(async () => expect(await cancelled()).toBe(1));
        return await answer;
      } finally {
        row.release();
        table?.release();
        await Promise.all([row.done, table?.done]);
        expect(await entriesOf(nsId)).toEqual([]);
        expect(bLog.filter((l) => l.msg === "reading the replication DLQ size failed").length).toBe(logged + 1);
      }
    }

    test.skipIf(store !== "postgres")("TestDeleteNamespaceAnswersOkWhenTheGaugeReadFails: the delete made, a failed read of replication_dlq_size after it is logged", async () => {
      const nsId = await leftWithEntries("blip", "w3", 1);
      // Before: the delete, made, answered "canceling statement due to user request". (Its run was in the DLQ only.)
      expect(await withTheGaugeReadCancelled(nsId, () => b.client(OperatorService).deleteNamespace({ namespace: "blip" }).then((r) => r.deletedExecutions))).toBe(0n);
    });

    test.skipIf(store !== "postgres")("TestPurgeAnswersOkWhenTheGaugeReadFails: the entries purged, a failed read of replication_dlq_size after it is logged", async () => {
      const nsId = await leftWithEntries("purged", "w5", 1);
      // Before: the purge, made, answered "canceling statement due to user request", and a retry found nothing to purge.
      expect(await withTheGaugeReadCancelled(nsId, () => b.client(AdminService).purgeReplicationDlq({ sourceCluster: "clusterA" }).then((r) => r.purged))).toBe(1n);
    });
  });
}
