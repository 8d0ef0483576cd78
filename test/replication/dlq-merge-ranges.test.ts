import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import type { HistoryApplier } from "../../replication/applier";
import { HELD_BEHIND } from "../../replication/dlq";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { replicationDlq } from "../../src/persistence/schema";
import { connectAll, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";
import { expectSameHistories, globalNamespace, historiesOf } from "./support";

setDefaultTimeout(serverStartTimeout);

const NS = "payments";

/** Raw history calls x has answered (the merge's fetches from its source). */
const rawHistoryCalls = (x: TestCluster) =>
  [...x.server.metrics.render().matchAll(/^service_requests\{operation="GetWorkflowExecutionRawHistory"[^}]*\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);

for (const store of await testStores()) {
  describe(`a DLQ merge of long runs on ${store} (clusterA -> clusterB, one shard)`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    /** Workflow ids whose applies on B fail; and per workflow id, an event id whose apply fails. */
    const poisoned = new Set<string>();
    const failAt = new Map<string, number>();
    const dlqRows = () => b.server.database.db.select().from(replicationDlq).orderBy(replicationDlq.taskId);
    const wf = () => a.client(WorkflowService);
    const faulty = (inner: HistoryApplier): HistoryApplier => ({
      ...inner,
      async applyTask(tx, ns, task, fetchRaw) {
        if (poisoned.has(task.workflowId)) throw new Error(`injected fault for ${task.workflowId}`);
        const at = failAt.get(task.workflowId);
        if (at !== undefined && task.events.some((e) => Number(e.eventId) === at)) throw new Error(`injected fault at event ${at}`);
        return inner.applyTask(tx, ns, task, fetchRaw);
      },
      planApply(ns, task, reads) {
        if (poisoned.has(task.workflowId)) throw new Error(`injected fault for ${task.workflowId}`);
        return inner.planApply(ns, task, reads);
      },
    });

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{ shards: 1 }, { shards: 1, serverOptions: { replication: { retry: { attempts: 2, backoffMs: 5 }, wrapApplier: faulty } } }]);
      await connectAll([a, b]);
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    /** Starts each workflow and signals them in turn (their tasks interleaved) until each has `events` events, all held in B's DLQ: its entries. */
    async function heldRuns(workflowIds: string[], events: number): Promise<number> {
      for (const id of workflowIds) poisoned.add(id);
      for (const id of workflowIds) await wf().startWorkflowExecution({ namespace: NS, workflowId: id, workflowType: "Pay", taskQueue: "q" });
      for (let i = 1; i < events; i++) {
        for (const id of workflowIds) await wf().signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: id }, signalName: `s${i}` });
      }
      const n = workflowIds.length * events;
      await eventually(async () => expect(await dlqRows()).toHaveLength(n), { timeout: 60_000 });
      for (const id of workflowIds) poisoned.delete(id);
      return n;
    }

    /**
     * Merges all n entries, with at most 4 fetches from A (a range per run, a page per 4 MB; a fetch per entry before), then
     * checks that the runs are released: workflowId's next task replicates. Returns how long the merge took (ms).
     */
    async function mergeAsRanges(n: number, workflowId: string): Promise<number> {
      const before = rawHistoryCalls(a);
      const started = performance.now();
      const merged = await b.client(AdminService).mergeReplicationDlq({});
      const ms = performance.now() - started;
      expect([merged.merged, merged.failed]).toEqual([BigInt(n), []]);
      expect(await dlqRows()).toEqual([]);
      expect(rawHistoryCalls(a) - before).toBeLessThanOrEqual(4);
      await expectSameHistories(a, b, nsId);
      await wf().signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId }, signalName: "after" });
      await eventually(() => expectSameHistories(a, b, nsId));
      expect(await dlqRows()).toEqual([]);
      return ms;
    }

    test("TestMergeDrainsARunAsRanges: 600 entries of two interleaved runs merge in order with a few fetches from the source, not one per entry", async () => {
      const n = await heldRuns(["long-1", "long-2"], 300);
      // One range per run (a fetch per 4 MB page of it). Before: a fetch per entry, 600.
      const ms = await mergeAsRanges(n, "long-1");
      console.log(`${store}: merged ${n} DLQ entries in ${ms.toFixed(0)} ms: ${(ms / n).toFixed(2)} ms per entry`);
    });

    test("TestEntriesStoredWithoutAVersionHistoryMergeAsRanges: 300 entries of the DLQ's older rows merge in order with a fetch per run, not one per entry", async () => {
      const n = await heldRuns(["old-1", "old-2"], 150);
      // As stored before the DLQ kept the task's version history (2026-12-06).
      await b.server.database.db.update(replicationDlq).set({ versionHistory: null });
      // One range per run, of the source's current branch. Before: a fetch per entry, 300.
      const ms = await mergeAsRanges(n, "old-2");
      console.log(`${store}: merged ${n} DLQ entries without a version history in ${ms.toFixed(0)} ms: ${(ms / n).toFixed(2)} ms per entry`);
    });

    test("TestAnEntryThatFailsInARangeIsKeptWithTheRest: the entries before it merge, it keeps its reason, those after it are held behind it", async () => {
      await heldRuns(["mid"], 6);
      failAt.set("mid", 4);
      const merged = await b.client(AdminService).mergeReplicationDlq({});
      expect(merged.merged).toBe(3n);
      expect(merged.failed.map((e) => [e.firstEventId, e.attempts, e.lastError])).toEqual([
        [4n, 1, "injected fault at event 4"], [5n, 0, HELD_BEHIND], [6n, 0, HELD_BEHIND],
      ]);
      expect((await dlqRows()).map((r) => [r.firstEventId, r.attempts])).toEqual([[4, 1], [5, 0], [6, 0]]);
      const onB = (await historiesOf(b, nsId)).filter((e) => e.workflowId === "mid").map((e) => e.eventId);
      expect(onB).toEqual([1, 2, 3]);

      failAt.delete("mid");
      expect(await b.client(AdminService).mergeReplicationDlq({})).toMatchObject({ merged: 3n, failed: [] });
      await expectSameHistories(a, b, nsId);
    });
  });
}
