import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createClusterDirectory } from "../../src/cluster/directory";
import { createEventNotifier } from "../../src/history/notifier";
import { createHistoryQueries } from "../../src/history/queries";
import { createNamespaceRegistry } from "../../src/namespace/registry";
import { historyEvents } from "../../src/persistence/schema";
import { eventually } from "../support/eventually";
import { holdingReads, type Hold } from "../support/holding-reads";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

for (const store of await testStores()) {
  describe(`history long poll on ${store}`, () => {
    let a: TestCluster;
    beforeAll(async () => {
      a = await startTestCluster({ store, name: "clusterA" });
    });
    afterAll(() => a.destroy());

    /** Run w in a new namespace, and its history's long polls through queries of their own over db's reads held as hold says. */
    async function followedRun(namespace: string, hold: Hold, holds?: (table: unknown) => boolean) {
      const wf = a.client(WorkflowService);
      await wf.registerNamespace({ namespace });
      const { runId } = await wf.startWorkflowExecution({ namespace, workflowId: "w", workflowType: "t", taskQueue: "q" });
      const db = a.server.database.db;
      const wake = createEventNotifier();
      const queries = createHistoryQueries({
        db: holdingReads(db, hold, holds),
        namespaces: createNamespaceRegistry({ db, clusters: createClusterDirectory(db, a.server.cluster) }),
        notifier: wake,
        recheckMs: 10_000,
      });
      const read = (token: Uint8Array, waitMs: number) =>
        queries.getHistory({ namespace, workflowId: "w", runId: "", pageSize: 100, token, waitNewEvent: true, waitMs });
      return { wf, runId, wake, read };
    }

    test("AnEventCommittedWhileThePollReadsTheHistoryWakesIt (no wait for the re-read)", async () => {
      const hold = { on: false, ms: 400, held: 0 };
      // Only the events read is held: the last read before the poll decides to wait.
      const { wf, runId, wake, read } = await followedRun("orders", hold, (table) => table === historyEvents);
      const first = await read(new Uint8Array(), 0);
      expect(first.events.map((e) => Number(e.eventId))).toEqual([1]);

      hold.on = true;
      const t0 = performance.now();
      const polled = read(first.nextPageToken, 15_000).then((page) => ({ page, at: performance.now() - t0 }));
      // The poll's read of the events has its answer (none new) and holds it: commit one now.
      await eventually(() => expect(hold.held).toBeGreaterThan(0), { interval: 5 });
      hold.on = false;
      await wf.signalWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: "w" }, signalName: "paid" });
      wake.notify(runId);
      const { page, at } = await polled;
      expect(page.events.map((e) => Number(e.eventId))).toEqual([2]);
      // Not the 10 s re-read.
      expect(at).toBeLessThan(3_000);
    });

    test("FiftyFollowersOfOneRunShareTheirReads: a commit costs a read or two, not two per follower", async () => {
      const reads = { on: true, ms: 0, held: 0 }; // counts every select, holds none
      const { wf, runId, wake, read } = await followedRun("followed", reads);
      const { nextPageToken } = await read(new Uint8Array(), 0);
      const initial = reads.held;
      const polls = Array.from({ length: 50 }, () => read(nextPageToken, 15_000));
      // All 50 have read (nothing new) and wait.
      await eventually(async () => {
        const seen = reads.held;
        expect(seen).toBeGreaterThan(initial);
        await Bun.sleep(100);
        expect(reads.held).toBe(seen);
      });
      const before = reads.held;
      await wf.signalWorkflowExecution({ namespace: "followed", workflowExecution: { workflowId: "w" }, signalName: "paid" });
      wake.notify(runId);
      const pages = await Promise.all(polls);
      expect(pages.map((p) => p.events.map((e) => Number(e.eventId)))).toEqual(pages.map(() => [2]));
      expect(reads.held - before).toBeLessThanOrEqual(4);
    });
  });
}
