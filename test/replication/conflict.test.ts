import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowExecutionStatus } from "../../src/gen/tern/common/v1/common_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { addr, connectAll, expectActiveOn, startClusters } from "../failover/mesh";
import { tern } from "../backfill/support";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";
const wf = (x: TestCluster) => x.client(WorkflowService);
const signal = (x: TestCluster, workflowId: string, requestId: string) =>
  wf(x).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId }, signalName: requestId, requestId });

/** The current branch as "eventId@version type requestId" lines. */
async function historyOf(x: TestCluster, workflowId: string): Promise<string[]> {
  const res = await wf(x).getWorkflowExecutionHistory({ namespace: NS, execution: { workflowId }, maximumPageSize: 1000 });
  return res.history!.events.map((e) => {
    const a = e.attributes.value as { requestId?: string } | undefined;
    return `${e.eventId}@${e.version} ${e.attributes.case} ${a?.requestId ?? ""}`.trim();
  });
}

/** Cuts (or restores) replication between x and y, both ways. */
async function link(x: TestCluster, y: TestCluster, on: boolean) {
  await x.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(y), enableRemoteClusterConnection: on });
  await y.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(x), enableRemoteClusterConnection: on });
}

for (const store of await testStores()) {
  describe(`conflict resolution on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, {}]);
      await connectAll([a, b]);
      await wf(a).registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await expectActiveOn(b, NS, "clusterA", 1n);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("TestHigherVersionBranchWinsEverywhereAndLostSignalsAreReappliedOnce", async () => {
      for (const id of ["w1", "w2"]) {
        await wf(a).startWorkflowExecution({ namespace: NS, workflowId: id, workflowType: "order", taskQueue: "q", requestId: `start-${id}` });
        await signal(a, id, `${id}-before`);
      }
      await eventually(async () => expect(await historyOf(b, "w2")).toEqual(await historyOf(a, "w2")));
      await link(a, b, false);
      // Forced failover on B while A, cut off, still takes writes at version 1.
      await wf(b).updateNamespace({ namespace: NS, activeClusterName: "clusterB" });
      await signal(a, "w1", "a-1");
      await signal(a, "w1", "a-2");
      await signal(a, "w1", "both"); // acknowledged on A, retried by the client on B
      await signal(b, "w1", "both");
      await signal(b, "w1", "b-1");
      await signal(a, "w2", "a-only"); // B never writes w2: A's branch is the only one
      await wf(b).terminateWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "w2" }, reason: "closed on B" });
      await link(a, b, true);

      await expectActiveOn(a, NS, "clusterB", 2n);
      const w1 = await eventually(async () => {
        const [ha, hb] = await Promise.all([historyOf(a, "w1"), historyOf(b, "w1")]);
        expect(ha).toEqual(hb);
        expect(ha.filter((l) => l.includes("Signaled"))).toHaveLength(5);
        return ha;
      }, { timeout: 30_000 });
      // A applies B's divergent branch in full (conflict resolution); B applied A's ordinary pages in two round trips.
      expect(a.server.metrics.render()).toMatch(/replication_pages_applied\{[^}]*path="full"[^}]*\} [1-9]/);
      expect(b.server.metrics.render()).toMatch(/replication_pages_applied\{[^}]*path="pipelined"[^}]*\} [1-9]/);
      // B's branch (version 2) won on both; A's lost signals follow it at version 2, each once.
      expect(w1).toEqual([
        "1@1 workflowExecutionStartedEventAttributes start-w1",
        "2@1 workflowExecutionSignaledEventAttributes w1-before",
        "3@2 workflowExecutionSignaledEventAttributes both",
        "4@2 workflowExecutionSignaledEventAttributes b-1",
        "5@2 workflowExecutionSignaledEventAttributes a-1",
        "6@2 workflowExecutionSignaledEventAttributes a-2",
      ]);
      // The lost branch stays readable on both clusters.
      for (const x of [a, b]) {
        const res = await x.client(AdminService).listHistoryBranches({ namespace: NS, workflowId: "w1" });
        expect(res.branches.map((br) => [br.current, br.events.length])).toEqual([[true, 6], [false, 5]]);
        expect(res.branches[1]!.events.slice(2).map((e) => `${e.eventId}@${e.version}`)).toEqual(["3@1", "4@1", "5@1"]);
      }
      const cli = await tern(a, "workflow", "show", "-n", NS, "-w", "w1", "--all-branches");
      expect(cli.code).toBe(0);
      expect(cli.out).toContain("current branch (run ");
      expect(cli.out).toContain("events 1-2 @ v1, events 3-6 @ v2");
      expect(cli.out).toContain("branch 1, lost a conflict, forked after event 2: events 1-5 @ v1");
      // w2 closed on B's branch: A's signal is not re-applied to a closed run but kept on its branch.
      const w2 = await eventually(async () => {
        const [ha, hb] = await Promise.all([historyOf(a, "w2"), historyOf(b, "w2")]);
        expect(ha).toEqual(hb);
        expect(ha.at(-1)).toStartWith("3@2 workflowExecutionTerminated");
        return ha;
      });
      expect(w2).toHaveLength(3);
      const lost = await a.client(AdminService).listHistoryBranches({ namespace: NS, workflowId: "w2" });
      expect(lost.branches[1]!.events.map((e) => (e.attributes.value as { requestId?: string }).requestId)).toContain("a-only");
      const desc = await wf(a).describeWorkflowExecution({ namespace: NS, execution: { workflowId: "w2" } });
      expect(desc.workflowExecutionInfo!.status).toBe(WorkflowExecutionStatus.TERMINATED);
      // Nothing went to the DLQ; verify finds the clusters equal.
      const report = await a.client(AdminService).verifyReplication({ namespace: NS, cluster: "clusterB" });
      expect([report.missing, report.extra, report.diverging]).toEqual([[], [], []]);
    });

    test("TestSameWorkflowStartedOnBothSidesKeepsTheHigherVersionRunAndTerminatesTheOther", async () => {
      await link(a, b, false);
      // Forced back to A while cut off: A writes at 101, B still believes itself active at 2.
      await wf(a).updateNamespace({ namespace: NS, activeClusterName: "clusterA" });
      const onA = await wf(a).startWorkflowExecution({ namespace: NS, workflowId: "w3", workflowType: "order", taskQueue: "q", requestId: "start-a" });
      const onB = await wf(b).startWorkflowExecution({ namespace: NS, workflowId: "w3", workflowType: "order", taskQueue: "q", requestId: "start-b" });
      await signal(b, "w3", "b-w3");
      await signal(a, "w3", "a-w3");
      await link(a, b, true);

      await expectActiveOn(b, NS, "clusterA", 101n);
      const status = (x: TestCluster, runId: string) =>
        wf(x).describeWorkflowExecution({ namespace: NS, execution: { workflowId: "w3", runId } }).then((d) => d.workflowExecutionInfo!.status);
      await eventually(async () => {
        for (const x of [a, b]) {
          expect(await status(x, onA.runId)).toBe(WorkflowExecutionStatus.RUNNING);
          expect(await status(x, onB.runId)).toBe(WorkflowExecutionStatus.TERMINATED);
        }
        // B's acknowledged signal moved to the run that won, once; the current run is A's.
        const [ha, hb] = await Promise.all([historyOf(a, "w3"), historyOf(b, "w3")]);
        expect(ha).toEqual(hb);
        expect(ha.filter((l) => l.includes("Signaled")).map((l) => l.split(" ").at(-1))).toEqual(["a-w3", "b-w3"]);
      }, { timeout: 30_000 });
      const lost = await wf(b).getWorkflowExecutionHistory({ namespace: NS, execution: { workflowId: "w3", runId: onB.runId } });
      const end = lost.history!.events.at(-1)!;
      expect(end.attributes.case).toBe("workflowExecutionTerminatedEventAttributes");
      expect((end.attributes.value as { reason: string }).reason).toStartWith("version conflict");
      expect(end.version).toBe(101n);
      for (const [x, y] of [[a, "clusterB"], [b, "clusterA"]] as const) {
        const report = await x.client(AdminService).verifyReplication({ namespace: NS, cluster: y });
        expect([report.missing, report.extra, report.diverging]).toEqual([[], [], []]);
      }
    });
  });
}
