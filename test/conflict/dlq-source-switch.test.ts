import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { eq } from "drizzle-orm";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import type { HistoryEvent } from "../../src/gen/tern/common/v1/common_pb";
import { HELD_BEHIND } from "../../replication/dlq";
import { historyBranchEvents, historyBranches, replicationDlq } from "../../src/persistence/schema";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { checkedApplier } from "../replication/support";
import { branchLines, dlqLines, expectLosingBranchKept, setLink, signalNamesOf, splitOnOneRun } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "dlqswitch";
const WF = "held-branch";
/** A's signals during the split: its tasks of them go to B's DLQ, the first failing, the others held behind it. */
const SIGNALS = 3;
const PAYLOAD = "p";

/**
 * A DLQ entry whose source switched branches before the merge (DESIGN.md sections 4 and 6):
 * A's tasks of its branch of WF (version 1) go to B's DLQ, B's applies of WF failing; B's
 * branch (version 2) reaches A and wins there, A's is kept as a non-current branch. A merge on
 * B fetches each entry's range of the task's branch, A's, not of A's current one (B's own
 * events): B keeps A's branch and re-applies its signals, rather than deleting the entries as
 * duplicates of what it holds and losing them. A source that no longer holds the task's branch
 * fails the entry, which is kept.
 */
for (const store of await testStores()) {
  describe(`a DLQ merge whose source switched branches, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    let aBranch: HistoryEvent[] = [];
    const poisoned = new Set<string>();
    const poisoning = checkedApplier(({ workflowId }) => {
      if (poisoned.has(workflowId)) throw new Error(`injected fault for ${workflowId}`);
    });
    const dlqOf = (x: TestCluster) => x.server.database.db.select().from(replicationDlq).where(eq(replicationDlq.workflowId, WF));

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, { serverOptions: { replication: { retry: { attempts: 3, backoffMs: 5 }, wrapApplier: poisoning } } }]);
      ({ aBranch } = await splitOnOneRun(a, b, { namespace: NS, workflowId: WF, signals: SIGNALS, payload: PAYLOAD }));
      poisoned.add(WF);
      await setLink(a, b, true);
      // B's branch wins on A; A's tasks of its own are in B's DLQ.
      await eventually(async () => {
        expect(await signalNamesOf(a, NS, WF)).toEqual(["before", "b-0"]);
        expect(await dlqOf(b)).toHaveLength(SIGNALS);
      }, { timeout: 30_000 });
    });
    afterAll(() => Promise.all([a, b].map((x) => x?.destroy())));

    /** Moves A's kept branches of WF to another workflow id and back: A holds the run but no longer the task's branch. */
    const hideBranches = (hidden: boolean) => {
      const [from, to] = hidden ? [WF, `${WF}-hidden`] : [`${WF}-hidden`, WF];
      const db = a.server.database.db;
      return Promise.all([historyBranches, historyBranchEvents].map((t) => db.update(t).set({ workflowId: to }).where(eq(t.workflowId, from))));
    };

    test("TestADlqEntryWhoseBranchTheSourceNoLongerHoldsIsKept", async () => {
      poisoned.delete(WF);
      await hideBranches(true);
      try {
        const res = await b.client(AdminService).mergeReplicationDlq({ sourceCluster: a.name });
        expect(res.merged).toBe(0n);
        expect(res.failed.map((e) => e.lastError)).toEqual([
          expect.stringMatching(/^source clusterA holds 0 of events \[3, 4\) of held-branch run \S+ on the task's branch: the entry is kept; purge it to drop it$/),
          HELD_BEHIND, HELD_BEHIND,
        ]);
        expect((await dlqOf(b)).map((r) => r.attempts).sort()).toEqual([0, 0, 4]);
        expect(await signalNamesOf(b, NS, WF)).toEqual(["before", "b-0"]);
      } finally {
        await hideBranches(false);
      }
    });

    test("TestADlqMergeWhoseSourceSwitchedBranchesBringsTheTasksBranch", async () => {
      poisoned.delete(WF);
      const context = async () => [...(await branchLines(b, NS, WF)), ...(await dlqLines(b))].join("\n");
      const merged = await b.client(AdminService).mergeReplicationDlq({ sourceCluster: a.name });
      expect([merged.merged, merged.failed.map((e) => e.lastError)], await context()).toEqual([BigInt(SIGNALS), []]);
      await expectLosingBranchKept(a, b, { namespace: NS, workflowId: WF, signals: SIGNALS, payload: PAYLOAD, aBranch }, context);
    });
  });
}
