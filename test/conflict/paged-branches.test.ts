import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { connectAll, describeOn, expectActiveOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { createConflictSweep } from "../../replication/conflict-sweep";
import type { NamespaceRecord } from "../../src/namespace/registry";
import { bringBranch, countingEventReads, historyOf, inside, setLink, type Inside } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "paged";
/** Events every run holds before the split: started, one signal. */
const FORK = 2;
/** A's signals on "long-losing" during the split, brought to B PAGES pages of PAGE_EVENTS. */
const PAGES = 10;
const PAGE_EVENTS = 10;

/**
 * A split brain whose branches the test brings from one cluster to the other a page at a time,
 * through each cluster's own history applier and database, as backfill does (DESIGN.md section 4):
 * a long branch that loses, and one whose first page loses and whose last wins.
 */
for (const store of await testStores()) {
  describe(`branches brought a page at a time, on ${store}`, () => {
    const ia: Inside = {};
    const ib: Inside = {};
    let a: TestCluster, b: TestCluster;
    const wf = (x: TestCluster) => x.client(WorkflowService);
    const signal = (x: TestCluster, workflowId: string, name: string, requestId = `${x.name}-${name}`) =>
      wf(x).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId }, signalName: name, requestId });
    const runIds = new Map<string, string>();

    /** Brings events [first, next) of a run's current branch on source to receiver, perPage a task (bringBranch). */
    async function bring(source: TestCluster, receiver: TestCluster, r: Inside, workflowId: string, first: number, next: number, perPage: number): Promise<number[]> {
      return bringBranch(source, receiver, r, NS, { workflowId, runId: runIds.get(workflowId)! }, first, next, perPage);
    }

    beforeAll(async () => {
      [a, b] = await startClusters(store, [inside(ia), inside(ib)]);
      await connectAll([a, b]);
      await wf(a).registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await expectActiveOn(b, NS, "clusterA", 1n);
      for (const id of ["long-losing", "no-request-id"]) {
        runIds.set(id, (await wf(a).startWorkflowExecution({ namespace: NS, workflowId: id, workflowType: "T", taskQueue: "q", requestId: `start-${id}` })).runId);
        await signal(a, id, `${id}-before`);
        await eventually(async () => expect((await historyOf(b, NS, id)).length).toBe(FORK));
      }
      // Cut off, B is forced active (version 2) while A still believes it is (version 1).
      await setLink(a, b, false);
      await wf(b).updateNamespace({ namespace: NS, activeClusterName: "clusterB" });
      expect((await describeOn(a, NS)).failoverVersion).toBe(1n);
      for (let i = 0; i < PAGES * PAGE_EVENTS; i++) await signal(a, "long-losing", `a-${i}`);
      await signal(b, "long-losing", "b-0");
      // "no-request-id": B's branch starts below A's and ends above it. B signals it at version 2
      // without request ids; A is forced away and back (version 101) and signals it; B too
      // (version 102), and signals it again.
      for (let i = 0; i < 3; i++) await signal(b, "no-request-id", `b-${i}`, "");
      for (const active of ["clusterB", "clusterA"]) await wf(a).updateNamespace({ namespace: NS, activeClusterName: active });
      expect((await describeOn(a, NS)).failoverVersion).toBe(101n);
      await signal(a, "no-request-id", "a-0");
      for (const active of ["clusterA", "clusterB"]) await wf(b).updateNamespace({ namespace: NS, activeClusterName: active });
      expect((await describeOn(b, NS)).failoverVersion).toBe(102n);
      await signal(b, "no-request-id", "b-high");
    });
    afterAll(() => Promise.all([a, b].map((x) => x?.destroy())));

    /** The names of the signals on x's current branch of a run, in order. */
    const signalNames = async (x: TestCluster, workflowId: string) =>
      (await historyOf(x, NS, workflowId)).flatMap((e) => (e.attributes.case === "workflowExecutionSignaledEventAttributes" ? [e.attributes.value.signalName] : []));

    test("TestALosingBranchOfManyPagesIsReadOncePageByPage", async () => {
      const reads = await bring(a, b, ib, "long-losing", FORK + 1, FORK + PAGES * PAGE_EVENTS + 1, PAGE_EVENTS);
      // B (active) keeps A's branch (version 1) and re-applies its signals, each once.
      expect(await signalNames(b, "long-losing")).toEqual(["long-losing-before", "b-0", ...Array.from({ length: PAGES * PAGE_EVENTS }, (_, i) => `a-${i}`)]);
      const kept = (await b.client(AdminService).listHistoryBranches({ namespace: NS, workflowId: "long-losing" })).branches.find((br) => !br.current)!;
      expect(kept.events.slice(FORK).map((e) => Number(e.eventId))).toEqual(Array.from({ length: PAGES * PAGE_EVENTS }, (_, i) => FORK + 1 + i));
      // Each page reads about its own events, not the branch kept before it.
      expect(Math.max(...reads)).toBeLessThanOrEqual(2 * PAGE_EVENTS);
    });

    test("TestAKeptBranchWhoseRequestsWereReappliedIsNotReadAgainWhenItsRunIsSettled", async () => {
      // Once the branch brought above is kept and its signals re-applied (B was active), settling
      // the run (each activation and start of B sweeps it) has nothing to read of it again.
      const ns: NamespaceRecord = await ib.namespaces!.getByName(NS);
      const key = { namespaceId: ns.id, workflowId: "long-losing", runId: runIds.get("long-losing")! };
      const before = await signalNames(b, "long-losing");
      expect(before.length).toBe(2 + PAGES * PAGE_EVENTS);
      const started = performance.now();
      const read = await b.server.database.db.transaction(async (tx) => {
        const counted = countingEventReads(tx);
        await ib.applier!.settle(counted.tx, ns, key);
        return counted.rows();
      });
      console.log(`settle of a kept branch of ${PAGES * PAGE_EVENTS} events: ${read} rows read, ${(performance.now() - started).toFixed(1)} ms`);
      expect(read).toBe(0);
      expect(await signalNames(b, "long-losing")).toEqual(before);
      // Nor does an activation's sweep of the namespace visit the run again.
      const db = b.server.database.db;
      const transactions: string[] = [];
      const sweep = createConflictSweep({
        db, cluster: b.server.cluster, namespaces: ib.namespaces!, applier: ib.applier!, log: b.server.log,
        writer: { transact: (operation, fn) => (transactions.push(operation), db.transaction(fn)) },
      });
      await sweep.trigger(ns.id);
      await sweep.stop();
      expect(transactions).toEqual([]);
    });

    test("TestASignalWithoutRequestIdIsReappliedOnceWhenItsBranchFirstLostThenWon", async () => {
      const id = "no-request-id";
      // A, active at 101 and not told of B's 102, gets the first page of B's branch (its events
      // at version 2): it loses to A's, is kept, and A re-applies its signals after its own.
      await bring(b, a, ia, id, FORK + 1, FORK + 4, 3);
      expect(await signalNames(a, id)).toEqual([`${id}-before`, "a-0", "b-0", "b-1", "b-2"]);
      // B (active at 102) gets A's branch, which lost there: only A's own signal is new to it.
      // A's re-applied copies of B's signals are B's own signals, sent without request ids.
      await bring(a, b, ib, id, FORK + 1, FORK + 5, 4);
      expect(await signalNames(b, id)).toEqual([`${id}-before`, "b-0", "b-1", "b-2", "b-high", "a-0"]);
      // Joined again, both converge on B's branch, each signal once.
      await setLink(a, b, true);
      await eventually(async () => {
        expect(await signalNames(a, id)).toEqual(await signalNames(b, id));
        expect(await signalNames(a, id)).toEqual([`${id}-before`, "b-0", "b-1", "b-2", "b-high", "a-0"]);
      }, { timeout: 30_000 });
    });
  });
}
