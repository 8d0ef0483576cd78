import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { VERSION_CONFLICT } from "../../replication/conflict";
import { EventType, WorkflowExecutionStatus } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { connectAll, describeOn, expectActiveOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { bringBranch, branchLines, expectNoDifference, historyOf, inside, setLink, type Inside } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "zombies";
const WF = "twice-started";

/**
 * A run that lost to another open run of its workflow (a ZOMBIE) is retired by the cluster
 * that becomes active: terminated, its signals re-applied to the run that won. A signal sent
 * without a request id is known by its origin (run, event id, version): the zombie's own run,
 * not the winner's, whose event at the same id and version is another event altogether.
 *
 * Before the split A starts the workflow (run R1: started and one signal, at version 1). Cut
 * off, B is forced active (version 2) and signals R1 (event 3); A, still active at version 1,
 * terminates R1 and starts the workflow again (run R2), then signals R2 twice without request
 * ids (R2's events 2 and 3 at version 1). B's branch of R1 reaches A while A is still at
 * version 1: R1 reopens there and R2 becomes a ZOMBIE that A may not retire yet. A is then
 * made active (version 101) and settles it.
 */
for (const store of await testStores()) {
  describe(`a run that lost to another run of its workflow, on ${store}`, () => {
    const ia: Inside = {};
    let a: TestCluster, b: TestCluster;
    const wf = (x: TestCluster) => x.client(WorkflowService);
    let r1 = "", r2 = "";

    const signalNames = async (x: TestCluster, runId: string) =>
      (await historyOf(x, NS, WF, runId)).flatMap((e) => (e.attributes.case === "workflowExecutionSignaledEventAttributes" ? [e.attributes.value.signalName] : []));
    const statusOf = async (x: TestCluster, runId: string) =>
      (await wf(x).describeWorkflowExecution({ namespace: NS, execution: { workflowId: WF, runId } })).workflowExecutionInfo!.status;

    beforeAll(async () => {
      [a, b] = await startClusters(store, [inside(ia), {}]);
      await connectAll([a, b]);
      await wf(a).registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await expectActiveOn(b, NS, "clusterA", 1n);
      r1 = (await wf(a).startWorkflowExecution({ namespace: NS, workflowId: WF, workflowType: "T", taskQueue: "q", requestId: "start-1" })).runId;
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF, runId: r1 }, signalName: "before", requestId: "before" });
      await eventually(async () => expect((await historyOf(b, NS, WF, r1)).length).toBe(2));

      await setLink(a, b, false);
      await wf(b).updateNamespace({ namespace: NS, activeClusterName: "clusterB" });
      expect((await describeOn(a, NS)).failoverVersion).toBe(1n);
      await wf(b).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF, runId: r1 }, signalName: "b-split", requestId: "b-split" });
      await wf(a).terminateWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF, runId: r1 }, reason: "restarted during the split" });
      r2 = (await wf(a).startWorkflowExecution({ namespace: NS, workflowId: WF, workflowType: "T", taskQueue: "q", requestId: "start-2" })).runId;
      for (let i = 0; i < 2; i++) {
        await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF, runId: r2 }, signalName: `a-noid-${i}`, requestId: "" });
      }
    });
    afterAll(() => Promise.all([a, b].map((x) => x?.destroy())));

    test("TestAZombiesSignalsWithoutRequestIdsAreReappliedToTheWinnerOnceItsClusterIsActive", async () => {
      // R2's first signal and R1's second event share an event id and a version.
      const [first] = (await historyOf(a, NS, WF, r2)).filter((e) => e.eventType === EventType.WORKFLOW_EXECUTION_SIGNALED);
      expect([first!.eventId, first!.version]).toEqual([2n, 1n]);
      expect((await historyOf(a, NS, WF, r1)).slice(1, 2).map((e) => [e.eventId, e.version])).toEqual([[2n, 1n]]);

      // B's branch of R1 (event 3, version 2) wins on A: R1 reopens, R2 is a ZOMBIE A cannot retire at version 1.
      await bringBranch(b, a, ia, NS, { workflowId: WF, runId: r1 }, 3, 4, 1);
      expect([await statusOf(a, r1), await statusOf(a, r2)]).toEqual([WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.ZOMBIE]);
      expect(await signalNames(a, r1)).toEqual(["before", "b-split"]);

      // A becomes active (version 101): its activation sweep retires R2 and moves its signals to R1.
      for (const active of ["clusterB", "clusterA"]) await wf(a).updateNamespace({ namespace: NS, activeClusterName: active });
      expect((await describeOn(a, NS)).failoverVersion).toBe(101n);
      await eventually(async () => expect(await statusOf(a, r2)).toBe(WorkflowExecutionStatus.TERMINATED));
      const last = (await historyOf(a, NS, WF, r2)).at(-1)!;
      expect(last.attributes.case === "workflowExecutionTerminatedEventAttributes" && last.attributes.value.reason.startsWith(VERSION_CONFLICT)).toBe(true);
      expect(await signalNames(a, r1), (await branchLines(a, NS, WF, r1)).join("\n")).toEqual(["before", "b-split", "a-noid-0", "a-noid-1"]);

      // B, made passive at A's version, joins again: both hold the same runs, each signal once.
      await wf(b).updateNamespace({ namespace: NS, activeClusterName: "clusterA" });
      await setLink(a, b, true);
      await eventually(async () => {
        await expectNoDifference([a, b], NS);
        for (const x of [a, b]) {
          expect([x.name, await signalNames(x, r1)]).toEqual([x.name, ["before", "b-split", "a-noid-0", "a-noid-1"]]);
          expect([x.name, await statusOf(x, r1), await statusOf(x, r2)]).toEqual([x.name, WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.TERMINATED]);
        }
      }, { timeout: 30_000 });
    });
  });
}
