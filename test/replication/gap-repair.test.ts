import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import type { HistoryApplier } from "../../replication/applier";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr, connectBothWays, expectSameHistories, globalNamespace, historiesOf } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";
const RUNS = ["gap-0", "gap-1", "gap-2"];

/**
 * An applier for B that sees the signals of runs gap-* arrive without their first signal's
 * event (2), as after a lost task, so each run has a gap to repair from A's raw history; it
 * records each apply of such a task (with its transaction) and each range it asks for.
 */
function lostEvents() {
  const seen = {
    tries: [] as { tx: unknown; workflowId: string }[],
    asked: [] as { workflowId: string; first: number; next: number; served: boolean }[],
  };
  const wrap = (inner: HistoryApplier): HistoryApplier => ({
    ...inner,
    planApply: (ns, task, reads) => (task.workflowId.startsWith("gap-") ? undefined : inner.planApply(ns, task, reads)),
    applyTask(tx, ns, task, fetchRaw) {
      if (!task.workflowId.startsWith("gap-") || task.firstEventId !== 2) return inner.applyTask(tx, ns, task, fetchRaw);
      seen.tries.push({ tx, workflowId: task.workflowId });
      const lost = { ...task, firstEventId: 3, events: task.events.filter((e) => e.eventId !== 2n) };
      return inner.applyTask(tx, ns, lost, async (t, first, next) => {
        const asked = { workflowId: t.workflowId, first, next };
        try {
          const events = await fetchRaw(t, first, next);
          seen.asked.push({ ...asked, served: true });
          return events;
        } catch (e) {
          seen.asked.push({ ...asked, served: false });
          throw e;
        }
      });
    },
  });
  return { seen, wrap };
}

for (const store of await testStores()) {
  describe(`gap repair on ${store}`, () => {
    let a: TestCluster, b: TestCluster, nsId: string;
    const gaps = lostEvents();
    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, { serverOptions: { replication: { wrapApplier: gaps.wrap } } }]);
      await connectBothWays(a, b);
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a, b].map((x) => x.destroy())));

    const setBPulls = (enabled: boolean) => b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: enabled });

    test("TestAPageWithAGapInEachOfThreeRunsRollsBackOnceAndFetchesThemAllBeforeItsSecondTry, every event applied once, in order", async () => {
      const wf = a.client(WorkflowService);
      for (const id of RUNS) await wf.startWorkflowExecution({ namespace: NS, workflowId: id, workflowType: "T", taskQueue: "q" });
      await eventually(() => expectSameHistories(a, b, nsId));

      // B pulls nothing while A signals each run twice: it then gets them in one page (one answer), each run lacking event 2.
      await setBPulls(false);
      for (const id of RUNS) {
        for (const s of ["s1", "s2"]) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: id }, signalName: s });
      }
      await setBPulls(true);
      await eventually(() => expectSameHistories(a, b, nsId));

      // One page: its first apply tried all three runs.
      const first = gaps.seen.tries[0]!.tx;
      expect(gaps.seen.tries.filter((t) => t.tx === first).map((t) => t.workflowId).sort()).toEqual(RUNS);
      // Each run tried twice: the attempt that found the three gaps, rolled back, and the one after all three were fetched.
      expect(RUNS.map((id) => gaps.seen.tries.filter((t) => t.workflowId === id).length)).toEqual([2, 2, 2]);
      const asked = (served: boolean) => gaps.seen.asked.filter((r) => r.served === served).map((r) => `${r.workflowId} [${r.first}, ${r.next})`).sort();
      expect(asked(false)).toEqual(RUNS.map((id) => `${id} [2, 3)`));
      expect(asked(true)).toEqual(RUNS.map((id) => `${id} [2, 3)`));
      for (const id of RUNS) {
        expect((await historiesOf(b, nsId)).filter((e) => e.workflowId === id).map((e) => e.eventId)).toEqual([1, 2, 3]);
      }
    });
  });
}
