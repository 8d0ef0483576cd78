import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { asc, eq } from "drizzle-orm";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import type { HistoryEvent } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { historyBranches } from "../../src/persistence/schema";
import { connectAll, describeOn, expectActiveOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { bringBranch, branchLines, cancelRequestIds, dlqLines, expectNoDifference, historyOf, inside, setLink, type Inside } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** Events the run holds before B is cut off: started, one signal. */
const FORK = 2;
/** B's requests during its split: two signals (one without a request id) and a cancel request. */
const B_REQUESTS = 3;
const CANCEL = "b-cancel";
/** The same run on every cluster. */
interface Run { namespace: string; workflowId: string; runId: string }

/** The names of the signals on events, in order. */
const signalNames = (events: HistoryEvent[]) =>
  events.flatMap((e) => (e.attributes.case === "workflowExecutionSignaledEventAttributes" ? [e.attributes.value.signalName] : []));

/** What identifies a request wherever it is re-applied (conflict.ts requestKey): its request id, or its original event. */
function requestKeyOf(runId: string, e: HistoryEvent): string | undefined {
  const a = e.attributes;
  if (a.case !== "workflowExecutionSignaledEventAttributes" && a.case !== "workflowExecutionCancelRequestedEventAttributes") return undefined;
  return a.value.requestId || `reapply:${runId}:${e.eventId}:${e.version}`;
}

/**
 * A kept branch whose requests were re-applied (its settle mark set) on a cluster that is
 * active, whose run then switches branches there while the cluster is passive (DESIGN.md
 * section 4, conflict.ts): the old current branch, holding the re-applied copies, is kept
 * itself, unsettled. When the cluster is active again and settles, every request of every
 * branch must be on the current branch once, on every cluster, and no kept branch's mark may
 * claim a request the current branch lacks.
 *
 * In both tests, before the split A starts the workflow and signals it ("before"). B, cut off,
 * is forced active (version 2) and writes its branch: a signal, one without a request id and a
 * cancel request. A fails over away and back (version 101) and signals ("a-0"). B's branch
 * reaches A: A keeps it, re-applies its requests after its own signal, and marks it settled.
 */
for (const store of await testStores()) {
  describe(`a settled branch whose run switches branches while its cluster is passive, on ${store}`, () => {
    const ia: Inside = {};
    let a: TestCluster, b: TestCluster, c: TestCluster;
    const wf = (x: TestCluster) => x.client(WorkflowService);
    const signal = (x: TestCluster, run: Run, name: string, requestId = name) =>
      wf(x).signalWorkflowExecution({ namespace: run.namespace, workflowExecution: { workflowId: run.workflowId }, signalName: name, requestId });
    const history = (x: TestCluster, run: Run) => historyOf(x, run.namespace, run.workflowId);
    const failover = (x: TestCluster, run: Run, active: string) => wf(x).updateNamespace({ namespace: run.namespace, activeClusterName: active });
    const activeOn = async (x: TestCluster, run: Run) => {
      const ns = await describeOn(x, run.namespace);
      return [ns.replicationConfig!.activeClusterName, ns.failoverVersion];
    };

    /** The run's kept branches in x's database, with their marks. */
    const branchRows = (x: TestCluster, run: Run) =>
      x.server.database.db.select().from(historyBranches).where(eq(historyBranches.runId, run.runId)).orderBy(asc(historyBranches.branchId));

    /** The run's kept branch on x whose version history ends at `version`. */
    const branchEndingAt = async (x: TestCluster, run: Run, version: number) => (await branchRows(x, run)).find((r) => r.versionHistory.at(-1)!.version === version);

    /**
     * Requests on x's kept branches of the run, up to each branch's mark, that x's current
     * branch lacks (a mark claims them there), one line each. With `carried`, a request another
     * kept branch holds past its own mark (settle re-applies it from there) is not counted.
     */
    async function markBreaches(x: TestCluster, run: Run, { carried = false } = {}): Promise<string[]> {
      const [rows, listed] = await Promise.all([
        branchRows(x, run),
        x.client(AdminService).listHistoryBranches({ namespace: run.namespace, workflowId: run.workflowId }),
      ]);
      const eventsOf = (branchId: number) => listed.branches.find((br) => br.branchId === branchId)?.events ?? [];
      const between = (events: HistoryEvent[], after: number, through: number) => events.filter((e) => e.eventId > BigInt(after) && e.eventId <= BigInt(through));
      const keysOf = (events: HistoryEvent[]) => events.flatMap((e) => [requestKeyOf(run.runId, e) ?? [], `reapply:${run.runId}:${e.eventId}:${e.version}`].flat());
      const held = new Set(keysOf(listed.branches.find((br) => br.current)!.events));
      for (const row of carried ? rows : []) {
        const unsettled = between(eventsOf(row.branchId), Math.max(row.forkEventId, row.reappliedThrough), Number.MAX_SAFE_INTEGER);
        for (const key of keysOf(unsettled)) held.add(key);
      }
      return rows.flatMap((row) => between(eventsOf(row.branchId), row.forkEventId, row.reappliedThrough).flatMap((e) => {
        const key = requestKeyOf(run.runId, e);
        return key && !held.has(key) ? [`${x.name} branch ${row.branchId} (mark ${row.reappliedThrough}): event ${e.eventId} ${key} is not on the current branch`] : [];
      }));
    }

    /** Every branch and DLQ entry of the clusters, for failure messages. */
    const context = async (clusters: TestCluster[], run: Run) =>
      (await Promise.all(clusters.map(async (x) => [...(await branchLines(x, run.namespace, run.workflowId)), ...(await dlqLines(x))]))).flat().join("\n");

    /**
     * Registers namespace on A for members, starts workflowId there and signals it, cuts B off and
     * writes B's branch and A's signal at version 101 (what both tests begin with); returns the run.
     */
    async function split(namespace: string, workflowId: string, members: TestCluster[]): Promise<Run> {
      await Promise.all([a, b, c].flatMap((x, i) => [a, b, c].slice(i + 1).map((y) => setLink(x, y, true))));
      await wf(a).registerNamespace({ namespace, isGlobalNamespace: true, clusters: [a, ...members].map((x) => x.name) });
      await Promise.all(members.map((x) => expectActiveOn(x, namespace, "clusterA", 1n)));
      const run = { namespace, workflowId, runId: "" };
      run.runId = (await wf(a).startWorkflowExecution({ namespace, workflowId, workflowType: "T", taskQueue: "q", requestId: `start-${workflowId}` })).runId;
      await signal(a, run, "before");
      await eventually(async () => {
        for (const x of members) expect((await history(x, run)).length).toBe(FORK);
      });
      await Promise.all([setLink(a, b, false), setLink(b, c, false)]);
      await failover(b, run, "clusterB");
      await signal(b, run, "b-0");
      await signal(b, run, "b-noid", "");
      await wf(b).requestCancelWorkflowExecution({ namespace, workflowExecution: { workflowId }, reason: "split", requestId: CANCEL });
      for (const active of ["clusterB", "clusterA"]) await failover(a, run, active);
      expect(await activeOn(a, run)).toEqual(["clusterA", 101n]);
      await signal(a, run, "a-0");
      return run;
    }

    /** Waits until A holds B's branch kept, its requests re-applied after A's signal and its mark at its end; returns A's current branch. */
    async function markedOnA(run: Run): Promise<HistoryEvent[]> {
      return eventually(async () => {
        const events = await history(a, run);
        expect(signalNames(events)).toEqual(["before", "a-0", "b-0", "b-noid"]);
        expect(cancelRequestIds(events)).toEqual([CANCEL]);
        expect(events.slice(FORK).map((e) => e.version)).toEqual([101n, 101n, 101n, 101n]);
        const kept = await branchEndingAt(a, run, 2);
        expect([kept?.forkEventId, kept?.reappliedThrough]).toEqual([FORK, FORK + B_REQUESTS]);
        return events;
      }, { timeout: 20_000 });
    }

    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [inside(ia), {}, {}]);
      await connectAll([a, b, c]);
    });
    afterAll(() => Promise.all([a, b, c].map((x) => x?.destroy())));

    test("TestRequestsOfASettledBranchAreReappliedFromTheBranchThatLostWhileTheClusterWasPassive", async () => {
      // C follows A's failovers and gets A's signal; then it is cut off before A re-applies anything.
      const run = await split("marks-lost", "switched-away", [b, c]);
      await expectActiveOn(c, run.namespace, "clusterA", 101n);
      await eventually(async () => expect((await history(c, run)).length).toBe(FORK + 1));
      await setLink(a, c, false);
      await setLink(a, b, true);
      const aBranch = await markedOnA(run);

      // C, cut off, is forced active (103) and signals: its branch forks after A's signal. A is
      // failed over to C as well, and is passive when C's branch reaches it.
      await failover(c, run, "clusterC");
      expect(await activeOn(c, run)).toEqual(["clusterC", 103n]);
      await signal(c, run, "c-0");
      await failover(a, run, "clusterC");
      expect(await activeOn(a, run)).toEqual(["clusterC", 103n]);
      await bringBranch(c, a, ia, run.namespace, run, FORK + 2, FORK + 3, 1);

      // C's branch is current on A; A's old branch, holding the copies, is kept unsettled (A was
      // passive); B's branch keeps its mark. What that mark claims is on A's old branch, past its mark.
      const switched = await history(a, run);
      expect([signalNames(switched), cancelRequestIds(switched)]).toEqual([["before", "a-0", "c-0"], []]);
      const oldCurrent = (await branchEndingAt(a, run, 101))!;
      expect([oldCurrent.forkEventId, oldCurrent.reappliedThrough, oldCurrent.versionHistory.at(-1)!.eventId]).toEqual([FORK + 1, FORK + 1, aBranch.length]);
      expect((await branchEndingAt(a, run, 2))?.reappliedThrough).toBe(FORK + B_REQUESTS);
      expect(await markBreaches(a, run, { carried: true })).toEqual([]);

      // A is forced active again (201): its sweep settles the run, re-applying from its old branch
      // (C, the only other cluster that could, is still cut off).
      await failover(a, run, "clusterA");
      expect(await activeOn(a, run)).toEqual(["clusterA", 201n]);
      await eventually(async () => {
        const events = await history(a, run);
        expect(signalNames(events), await context([a], run)).toEqual(["before", "a-0", "c-0", "b-0", "b-noid"]);
        expect(cancelRequestIds(events)).toEqual([CANCEL]);
        expect(events.slice(FORK + 2).map((e) => e.version)).toEqual([201n, 201n, 201n]);
        for (const row of await branchRows(a, run)) expect([row.branchId, row.reappliedThrough]).toEqual([row.branchId, row.versionHistory.at(-1)!.eventId]);
      }, { timeout: 20_000 });
      expect(await markBreaches(a, run)).toEqual([]);

      await expectEveryClusterSettled([a, b, c], run, ["before", "a-0", "c-0", "b-0", "b-noid"]);
    });

    test("TestCopiesOfASettledBranchAreNotReappliedAgainWhenThatBranchWinsWhileTheClusterIsPassive", async () => {
      // B's branch is brought to A (still cut off from B): A keeps it, re-applies its requests, marks it.
      const run = await split("marks-won", "switched-back", [b]);
      await bringBranch(b, a, ia, run.namespace, run, FORK + 1, FORK + 1 + B_REQUESTS, B_REQUESTS);
      const aBranch = await markedOnA(run);

      // B, still cut off, fails over away and back (102) and signals on its own branch. A is failed
      // over to B, and is passive when B's branch, now ending above A's, reaches it.
      for (const active of ["clusterA", "clusterB"]) await failover(b, run, active);
      expect(await activeOn(b, run)).toEqual(["clusterB", 102n]);
      await signal(b, run, "b-1");
      await failover(a, run, "clusterB");
      expect(await activeOn(a, run)).toEqual(["clusterB", 102n]);
      await bringBranch(b, a, ia, run.namespace, run, FORK + 1 + B_REQUESTS, FORK + 2 + B_REQUESTS, 1);

      // B's branch (the one marked) is current on A; A's old branch, holding A's signal and the
      // copies of B's requests, is the only kept branch, unsettled.
      const switched = await history(a, run);
      expect([signalNames(switched), cancelRequestIds(switched)]).toEqual([["before", "b-0", "b-noid", "b-1"], [CANCEL]]);
      const rows = await branchRows(a, run);
      expect(rows.map((r) => [r.forkEventId, r.reappliedThrough, r.versionHistory.at(-1)])).toEqual([[FORK, FORK, { eventId: aBranch.length, version: 101 }]]);

      // A is forced active again (201): its sweep re-applies A's own signal, and none of the copies.
      await failover(a, run, "clusterA");
      expect(await activeOn(a, run)).toEqual(["clusterA", 201n]);
      await eventually(async () => {
        const events = await history(a, run);
        expect(signalNames(events), await context([a], run)).toEqual(["before", "b-0", "b-noid", "b-1", "a-0"]);
        expect(events.at(-1)!.version).toBe(201n);
        const [kept] = await branchRows(a, run);
        expect(kept!.reappliedThrough).toBe(aBranch.length);
      }, { timeout: 20_000 });
      expect(cancelRequestIds(await history(a, run))).toEqual([CANCEL]);
      expect(await markBreaches(a, run)).toEqual([]);

      await expectEveryClusterSettled([a, b], run, ["before", "b-0", "b-noid", "b-1", "a-0"]);
    });

    /** Joins every cluster again and expects them to converge on A's branch (version 201), each request once, no mark claiming too much. */
    async function expectEveryClusterSettled(clusters: TestCluster[], run: Run, signals: string[]): Promise<void> {
      await Promise.all([setLink(a, b, true), setLink(a, c, true), setLink(b, c, true)]);
      await eventually(async () => {
        await expectNoDifference(clusters, run.namespace);
        for (const x of clusters) {
          const events = await history(x, run);
          expect([x.name, [...signalNames(events)].sort(), cancelRequestIds(events)]).toEqual([x.name, [...signals].sort(), [CANCEL]]);
          expect(await markBreaches(x, run)).toEqual([]);
          expect([x.name, ...(await activeOn(x, run))]).toEqual([x.name, "clusterA", 201n]);
        }
      }, { timeout: 40_000 }).catch(async (e) => {
        throw new Error(`${(e as Error).message}\n${await context(clusters, run)}`);
      });
    }
  });
}
