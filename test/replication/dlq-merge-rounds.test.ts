import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { LEFT_FOR_NEXT_MERGE } from "../../replication/dlq-merge";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { replicationDlq } from "../../src/persistence/schema";
import { connectAll, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { faultyApplier, mergeGate, type MergeGate } from "./dlq-faults";
import { globalNamespace } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "payments";

/** A merge whose held run's tasks keep coming past its last listing (B's merges list the DLQ once). */
for (const store of await testStores()) {
  describe(`a DLQ merge out of listings on ${store} (clusterA -> clusterB, one shard)`, () => {
    let a: TestCluster, b: TestCluster;
    const poisoned = new Set<string>();
    const gates = new Map<string, MergeGate>();
    const dlqRows = () => b.server.database.db.select().from(replicationDlq).orderBy(replicationDlq.taskId);

    beforeAll(async () => {
      [a, b] = await startClusters(store, [
        { shards: 1 },
        {
          shards: 1,
          serverOptions: { replication: { retry: { attempts: 2, backoffMs: 5 }, wrapApplier: faultyApplier(poisoned, new Map(), new Map(), gates), dlqMergeRounds: 1 } },
        },
      ]);
      await connectAll([a, b]);
      await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("TestMergeSaysWhatCameAfterItsLastListing: the entry is answered as not merged, so the operator merges again", async () => {
      const wf = a.client(WorkflowService);
      const workflowExecution = { workflowId: "late" };
      poisoned.add("late");
      await wf.startWorkflowExecution({ namespace: NS, workflowId: "late", workflowType: "Pay", taskQueue: "q" });
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution, signalName: "s1" });
      await eventually(async () => expect(await dlqRows()).toHaveLength(2), { timeout: 20_000 });
      poisoned.delete("late");

      // The merge listed both entries; a signal's task arrives and is held behind them.
      const gate = mergeGate();
      gates.set("late", gate);
      const merging = b.client(AdminService).mergeReplicationDlq({});
      await gate.held;
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution, signalName: "s2" });
      await eventually(async () => expect(await dlqRows()).toHaveLength(3), { timeout: 20_000 });
      gate.release();
      const merged = await merging;
      // Before: merged 2, failed none (the CLI's exit 0), the third left in the DLQ and the run held behind it unsaid.
      expect([merged.merged, merged.failed.map((e) => [e.firstEventId, e.lastError])]).toEqual([2n, [[3n, LEFT_FOR_NEXT_MERGE]]]);
      expect((await dlqRows()).map((r) => r.firstEventId)).toEqual([3]);
      expect(await b.client(AdminService).mergeReplicationDlq({})).toMatchObject({ merged: 1n, failed: [] });
      expect(await dlqRows()).toEqual([]);
    });
  });
}
