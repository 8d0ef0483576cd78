import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { LEFT_FOR_NEXT_MERGE } from "../../replication/dlq-reasons";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { replicationDlq } from "../../src/persistence/schema";
import { connectAll, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores, type StoreKind } from "../support/stores";
import { runCli } from "../cli/harness";
import { faultyApplier, mergeGate, type MergeGate } from "./dlq-faults";
import { globalNamespace, historiesOf } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "payments";

/**
 * clusterA -> clusterB (one shard each), B's applies of the poisoned workflow ids failing and its
 * merges listing the DLQ once (chases: how many runs of a merge's transaction take a held run's
 * later entries; the product's unless given).
 */
function mergePair(store: StoreKind, chases?: number) {
  const pair = {
    a: undefined as unknown as TestCluster,
    b: undefined as unknown as TestCluster,
    nsId: "",
    gates: new Map<string, MergeGate>(),
    dlqRows: () => pair.b.server.database.db.select().from(replicationDlq).orderBy(replicationDlq.taskId),
    /** Starts and signals workflowId on A with its applies on B failing: its two tasks in B's DLQ, the fault gone. */
    async heldRun(workflowId: string): Promise<void> {
      const wf = pair.a.client(WorkflowService);
      const before = (await pair.dlqRows()).length;
      poisoned.add(workflowId);
      await wf.startWorkflowExecution({ namespace: NS, workflowId, workflowType: "Pay", taskQueue: "q" });
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId }, signalName: "s1" });
      await eventually(async () => expect(await pair.dlqRows()).toHaveLength(before + 2), { timeout: 20_000 });
      poisoned.delete(workflowId);
    },
    /** Merges workflowId's two held entries while a signal's task arrives and is held behind them (after the merge listed them): the merge's answer. */
    async mergeWithATaskArriving(workflowId: string) {
      await pair.heldRun(workflowId);
      const gate = mergeGate();
      pair.gates.set(workflowId, gate);
      const merging = pair.b.client(AdminService).mergeReplicationDlq({});
      await gate.held;
      await pair.a.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId }, signalName: "s2" });
      await eventually(async () => expect(await pair.dlqRows()).toHaveLength(3), { timeout: 20_000 });
      gate.release();
      return merging;
    },
  };
  const poisoned = new Set<string>();
  beforeAll(async () => {
    const wrapApplier = faultyApplier(poisoned, new Map(), new Map(), pair.gates);
    [pair.a, pair.b] = await startClusters(store, [
      { shards: 1 },
      { shards: 1, serverOptions: { replication: { retry: { attempts: 2, backoffMs: 5 }, wrapApplier, dlqMergeRounds: 1, dlqMergeChases: chases } } },
    ]);
    await connectAll([pair.a, pair.b]);
    pair.nsId = await globalNamespace(pair.a, pair.b, NS);
  });
  afterAll(() => Promise.all([pair.a.destroy(), pair.b.destroy()]));
  return pair;
}

/** Entries that come after a merge's last listing (B's merges list the DLQ once). */
for (const store of await testStores()) {
  describe(`a DLQ merge out of listings on ${store} (clusterA -> clusterB, one shard)`, () => {
    const pair = mergePair(store);
    const { gates, dlqRows, heldRun } = pair;

    test("TestMergeTakesAHeldRunsLaterTasksInItsTransaction: a task held behind the run after the listing is merged with it, and the run is released", async () => {
      const wf = pair.a.client(WorkflowService);
      const workflowExecution = { workflowId: "late" };
      const merging = pair.mergeWithATaskArriving("late");
      // Before: merged 2, the third answered LEFT_FOR_NEXT_MERGE, left in the DLQ and the run held behind it (a run whose tasks
      // kept coming stayed held through every merge: on PostgreSQL, 14 and 10 entries left by two merges at 50 writes a second).
      expect(await merging).toMatchObject({ merged: 3n, failed: [] });
      expect(await dlqRows()).toEqual([]);
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution, signalName: "s3" });
      await eventually(async () => expect((await historiesOf(pair.b, pair.nsId)).filter((e) => e.workflowId === "late").map((e) => e.eventId)).toEqual([1, 2, 3, 4]));
      expect(await dlqRows()).toEqual([]);
    });

    test("TestMergeSaysWhatCameAfterItsLastListing: another run's entry that came after it is answered as not merged, so the operator merges again", async () => {
      await heldRun("first");
      const gate = mergeGate();
      gates.set("first", gate);
      const merging = pair.b.client(AdminService).mergeReplicationDlq({});
      await gate.held;
      await heldRun("second");
      gate.release();
      const merged = await merging;
      // Before 2026-12-07: merged 2, failed none (the CLI's exit 0), the entries left in the DLQ and the run held behind them unsaid.
      expect([merged.merged, merged.failed.map((e) => [e.workflowId, e.firstEventId, e.lastError])]).toEqual([
        2n, [["second", 1n, LEFT_FOR_NEXT_MERGE], ["second", 2n, LEFT_FOR_NEXT_MERGE]],
      ]);
      expect((await dlqRows()).map((r) => r.workflowId)).toEqual(["second", "second"]);
      expect(await pair.b.client(AdminService).mergeReplicationDlq({})).toMatchObject({ merged: 2n, failed: [] });
      expect(await dlqRows()).toEqual([]);
    });

  });

  describe(`a DLQ merge whose chase of a held run runs out on ${store} (one run of its transaction chases)`, () => {
    const pair = mergePair(store, 1);
    const { dlqRows } = pair;

    test("TestAHeldRunWhoseTasksOutrunTheChaseIsLeftForTheNextMerge: the entry the chase gave up on is answered as remaining, the CLI says to merge again, and the next merge releases the run", async () => {
      const wf = pair.a.client(WorkflowService);
      const workflowExecution = { workflowId: "fast" };
      // The transaction's one chase took s2's entry and needed its events from A: run again, it had no chase left (as under
      // writes that outrun 20 of them), and the merge had no listing left. The entry stays, its run held.
      const merged = await pair.mergeWithATaskArriving("fast");
      expect([merged.merged, merged.failed.map((e) => [e.workflowId, e.firstEventId, e.lastError])]).toEqual([2n, [["fast", 3n, LEFT_FOR_NEXT_MERGE]]]);
      expect((await dlqRows()).map((r) => r.firstEventId)).toEqual([3]);
      const cli = await runCli(["replication", "dlq", "merge"], { admin: { mergeReplicationDlq: () => merged } });
      expect(cli.code).toBe(1);
      expect(cli.stdout.split("\n")[0]).toBe(
        "Merged 2 DLQ entries; 0 still fail; 1 DLQ entry left in the DLQ, not merged (they reached it after this merge's last listing, " +
          "their runs' tasks still coming; those runs stay held): run 'tern replication dlq merge' again",
      );
      expect(await pair.b.client(AdminService).mergeReplicationDlq({})).toMatchObject({ merged: 1n, failed: [] });
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution, signalName: "s3" });
      await eventually(async () => expect((await historiesOf(pair.b, pair.nsId)).filter((e) => e.workflowId === "fast").map((e) => e.eventId)).toEqual([1, 2, 3, 4]));
      expect(await dlqRows()).toEqual([]);
    });
  });
}
