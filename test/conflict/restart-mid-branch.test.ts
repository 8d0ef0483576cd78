import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { sql } from "drizzle-orm";
import type { HistoryApplier } from "../../replication/applier";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import type { HistoryEvent } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { backfillDone, tern } from "../backfill/support";
import { connectAll, describeOn, expectActiveOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { json } from "../support/payload";
import { startTestCluster, type TestCluster, type TestClusterOptions } from "../support/server";
import { testStores } from "../support/stores";
import { branchLines, expectNoDifference, historyOf, setLink, signalCounts, signalKey } from "./support";

setDefaultTimeout(180_000);

const NS = "restarted";
const WF = "long-losing";
/** Events the run holds before the split: started, one signal. */
const FORK = 2;
/** A's signals during the split (its branch loses to B's). */
const SIGNALS = 24;
/** Each signal's payload: with PAGE_BYTES, a few events a raw history page. */
const PAYLOAD = "p".repeat(600);
/** Bytes of events B's backfill asks a page for: A's branch comes in several pages. */
const PAGE_BYTES = 4_000;
/** Pages of A's branch B commits before the stop. */
const PAGES_BEFORE_STOP = 2;

/** Comparable form of events (eventTime and all). */
const plain = (events: HistoryEvent[]) => events.map((e) => JSON.stringify(e, (_k, v) => (typeof v === "bigint" ? String(v) : v)));

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
    const wf = (x: TestCluster) => x.client(WorkflowService);
    /** A's current branch at the end of the split: what B must keep. */
    let aBranch: HistoryEvent[] = [];

    /**
     * Refuses B's applies of WF's pages past the first PAGES_BEFORE_STOP while on: each fails
     * (its transaction rolls back), as a stop in the middle of it leaves it. A page is not held
     * open instead: its transaction would hold up the rest of B (PGlite has one connection).
     */
    const hold = { on: false, refused: 0, pages: [] as string[] };
    const holding = (applier: HistoryApplier): HistoryApplier => ({
      ...applier,
      async applyTask(tx, ns, task, fetchRaw) {
        if (hold.on && task.workflowId === WF) {
          if (hold.pages.length >= PAGES_BEFORE_STOP) {
            hold.refused++;
            throw new Error("the server stopped in the middle of this page");
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

    const signalNames = async (x: TestCluster) =>
      (await historyOf(x, NS, WF)).flatMap((e) => (e.attributes.case === "workflowExecutionSignaledEventAttributes" ? [e.attributes.value.signalName] : []));

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, bOptions(holding)]);
      await connectAll([a, b]);
      await wf(a).registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await expectActiveOn(b, NS, "clusterA", 1n);
      await wf(a).startWorkflowExecution({ namespace: NS, workflowId: WF, workflowType: "T", taskQueue: "q", requestId: "start" });
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF }, signalName: "before", requestId: "before" });
      await eventually(async () => expect((await historyOf(b, NS, WF)).length).toBe(FORK));

      // Cut off, B is forced active (version 2) while A still believes it is (version 1).
      await setLink(a, b, false);
      await wf(b).updateNamespace({ namespace: NS, activeClusterName: "clusterB" });
      expect((await describeOn(a, NS)).failoverVersion).toBe(1n);
      for (let i = 0; i < SIGNALS; i++) {
        await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF }, signalName: `a-${i}`, input: json(PAYLOAD), requestId: `a-${i}` });
      }
      await wf(b).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF }, signalName: "b-0", requestId: "b-0" });
      aBranch = await historyOf(a, NS, WF);
      expect(aBranch.length).toBe(FORK + SIGNALS);

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
      expect(await signalNames(b)).toEqual(["before", "b-0", ...Array.from({ length: kept }, (_, i) => `a-${i}`)]);

      // B stops there, and comes back on its database without the refusals.
      await b.stop();
      stopped.push(b);
      b = await startTestCluster({ store, name: "clusterB", initialFailoverVersion: 2, dataLocation: b.dataLocation, ...bOptions() });
      await setLink(a, b, true);
      await backfillDone(b, NS, "clusterA");

      // A's branch is kept whole on B, each event once, as A wrote it.
      const context = async () => (await branchLines(b, NS, WF)).join("\n");
      const branches = (await b.client(AdminService).listHistoryBranches({ namespace: NS, workflowId: WF })).branches;
      const lost = branches.filter((br) => !br.current);
      expect(lost.length, await context()).toBe(1);
      expect(plain(lost[0]!.events)).toEqual(plain(aBranch));
      // Each of A's acknowledged signals is on B's current branch once.
      expect(await signalNames(b), await context()).toEqual(["before", "b-0", ...Array.from({ length: SIGNALS }, (_, i) => `a-${i}`)]);
      const counts = signalCounts(await historyOf(b, NS, WF));
      for (let i = 0; i < SIGNALS; i++) expect(counts.get(signalKey(`a-${i}`, PAYLOAD))).toBe(1);

      // A converges on B's branch: both hold the same histories.
      await eventually(async () => {
        await expectNoDifference([a, b], NS);
        expect(plain(await historyOf(a, NS, WF))).toEqual(plain(await historyOf(b, NS, WF)));
      }, { timeout: 30_000 });
    });
  });
}
