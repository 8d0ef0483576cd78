import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { sql } from "drizzle-orm";
import { RetryableReplicationError, type HistoryApplier } from "../../replication/applier";
import type { HistoryEvent } from "../../src/gen/tern/common/v1/common_pb";
import { backfillDone, tern } from "../backfill/support";
import { expectActiveOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { startTestCluster, type TestCluster, type TestClusterOptions } from "../support/server";
import { testStores } from "../support/stores";
import { branchLines, expectLosingBranchKept, setLink, signalNamesOf, splitOnOneRun } from "./support";

setDefaultTimeout(180_000);

const NS = "restarted";
const WF = "long-losing";
/** A's signals during the split (its branch loses to B's). */
const SIGNALS = 24;
/** Each signal's payload: with PAGE_BYTES, a few events a raw history page. */
const PAYLOAD = "p".repeat(600);
/** Bytes of events B's backfill asks a page for: A's branch comes in several pages. */
const PAGE_BYTES = 4_000;
/** Pages of A's branch B commits before the stop. */
const PAGES_BEFORE_STOP = 2;

/**
 * A stop of the receiving server in the middle of a branch that comes a page at a time (DESIGN.md
 * sections 4 and 6): B (active, version 2) backfills A's losing branch of WF (version 1), a
 * transaction per page, each keeping its events and re-applying their signals. B stops while
 * applying a page after the first ones committed, and restarts on its database: the backfill
 * resumes, and B ends with A's branch kept whole and each of its signals once on its own.
 */
for (const store of await testStores()) {
  describe(`a restart in the middle of a multi-page branch, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    /** Servers stopped for a restart: they own the data, removed once the restarted ones stop. */
    const stopped: TestCluster[] = [];
    /** A's current branch at the end of the split: what B must keep. */
    let aBranch: HistoryEvent[] = [];

    /**
     * Refuses B's applies of WF's pages past the first PAGES_BEFORE_STOP while on: each fails
     * (its transaction rolls back), as a stop in the middle of it leaves it (not the run's fault:
     * the page is retried, not the run given up). A page is not held
     * open instead: its transaction would hold up the rest of B (PGlite has one connection).
     */
    const hold = { on: false, refused: 0, pages: [] as string[] };
    const holding = (applier: HistoryApplier): HistoryApplier => ({
      ...applier,
      async applyTask(tx, ns, task, fetchRaw) {
        if (hold.on && task.workflowId === WF) {
          if (hold.pages.length >= PAGES_BEFORE_STOP) {
            hold.refused++;
            throw new RetryableReplicationError("the server stopped in the middle of this page");
          }
          const added = await applier.applyTask(tx, ns, task, fetchRaw);
          hold.pages.push(`[${task.firstEventId}, ${task.nextEventId})`);
          return added;
        }
        return applier.applyTask(tx, ns, task, fetchRaw);
      },
    });
    const bOptions = (wrap?: (a: HistoryApplier) => HistoryApplier): Partial<TestClusterOptions> => ({
      serverOptions: { replication: { historyPageBytes: PAGE_BYTES, ...(wrap ? { wrapApplier: wrap } : {}) } },
    });

    /** Restarts x on its data. */
    async function restart(x: TestCluster, initialFailoverVersion: number, o: Partial<TestClusterOptions> = {}): Promise<TestCluster> {
      await x.stop();
      stopped.push(x);
      return startTestCluster({ store, name: x.name, initialFailoverVersion, dataLocation: x.dataLocation, ...o });
    }

    /** Rows of WF's kept branches in B's database (committed pages). */
    async function keptRows(x: TestCluster): Promise<number> {
      const res = await x.server.database.db.execute(sql`select count(*)::int as n from history_branch_events where workflow_id = ${WF}`);
      const rows = ((res as { rows?: unknown[] }).rows ?? (res as unknown as unknown[])) as { n: number }[];
      return rows[0]!.n;
    }

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, bOptions(holding)]);
      ({ aBranch } = await splitOnOneRun(a, b, { namespace: NS, workflowId: WF, signals: SIGNALS, payload: PAYLOAD }));

      // The split's replication tasks are lost on both sides (a restart drops the ones the
      // servers held in memory): only B's backfill brings A's branch, a page at a time, while A
      // still holds it as its current branch. (A page of a branch the source keeps as a
      // non-current one past its current branch's end comes whole: raw-history.ts.)
      for (const x of [a, b]) await x.server.database.db.execute(sql`delete from replication_tasks`);
      a = await restart(a, 1);
      b = await restart(b, 2, bOptions(holding));
      await setLink(a, b, true);
      await expectActiveOn(a, NS, "clusterB", 2n);
    });
    afterAll(async () => {
      await Promise.all([a, b].map((x) => x?.destroy()));
      for (const x of stopped) await x.destroy();
    });

    test("TestAReceiverStoppedInTheMiddleOfABranchEndsWithTheWholeBranchOnce", async () => {
      hold.on = true;
      expect((await tern(b, "operator", "namespace", "backfill", NS, "--from", "clusterA")).code).toBe(0);
      // The first pages are committed (their events kept, their signals re-applied on B's
      // branch, in one transaction each) and the next one was tried.
      const kept = await eventually(async () => {
        expect(hold.refused).toBeGreaterThan(0);
        const n = await keptRows(b);
        expect(n).toBeGreaterThan(0);
        return n;
      }, { timeout: 30_000 });
      expect(kept, hold.pages.join(" ")).toBeLessThan(SIGNALS);
      expect(await signalNamesOf(b, NS, WF)).toEqual(["before", "b-0", ...Array.from({ length: kept }, (_, i) => `a-${i}`)]);

      // B stops there, and comes back on its database without the refusals.
      await b.stop();
      stopped.push(b);
      b = await startTestCluster({ store, name: "clusterB", initialFailoverVersion: 2, dataLocation: b.dataLocation, ...bOptions() });
      await setLink(a, b, true);
      await backfillDone(b, NS, "clusterA");

      const context = async () => (await branchLines(b, NS, WF)).join("\n");
      // A's branch is kept whole on B, each of its signals re-applied once; A converges on B's.
      await expectLosingBranchKept(a, b, { namespace: NS, workflowId: WF, signals: SIGNALS, payload: PAYLOAD, aBranch }, context);
    });
  });
}
