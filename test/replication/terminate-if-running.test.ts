import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { eq } from "drizzle-orm";
import { WorkflowExecutionStatus, WorkflowIdReusePolicy } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { namespaces } from "../../src/persistence/schema";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { expectTerminatedFor } from "../support/terminated-for";
import { expectActiveOn, startOrdersPair } from "../failover/mesh";
import { expectSameHistories } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "order", taskQueue: "q" };
const TIR = WorkflowIdReusePolicy.TERMINATE_IF_RUNNING;

for (const store of await testStores()) {
  describe(`terminate-if-running replicates on ${store} (clusterA active, clusterB passive)`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    const wf = (x: TestCluster) => x.client(WorkflowService);
    beforeAll(async () => {
      [a, b] = await startOrdersPair(store);
      const [row] = await a.server.database.db.select({ id: namespaces.id }).from(namespaces).where(eq(namespaces.name, "orders"));
      nsId = row!.id;
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    /** Status of the workflow's current run on x, and its run id. */
    const currentOn = async (x: TestCluster, workflowId: string) => {
      const info = (await wf(x).describeWorkflowExecution({ namespace: "orders", execution: { workflowId, runId: "" } })).workflowExecutionInfo!;
      return { runId: info.execution!.runId, status: WorkflowExecutionStatus[info.status] };
    };

    test("TestTerminateIfRunningReachesThePassiveClusterAsTheTerminateThenTheNewRun", async () => {
      const old = await wf(a).startWorkflowExecution({ namespace: "orders", workflowId: "w", ...T });
      await wf(a).signalWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: "w" }, signalName: "s" });
      const next = await wf(a).startWorkflowExecution({ namespace: "orders", workflowId: "w", ...T, requestId: "w-2", workflowIdReusePolicy: TIR });
      const swsOld = await wf(a).startWorkflowExecution({ namespace: "orders", workflowId: "sws", ...T });
      const swsNew = await wf(a).signalWithStartWorkflowExecution({ namespace: "orders", workflowId: "sws", ...T, signalName: "go", workflowIdReusePolicy: TIR });
      expect(swsNew.started).toBe(true);
      // Both runs of each workflow, event for event and row for row, as on A.
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 20_000 });
      await expectTerminatedFor(b, "orders", "w", old.runId, next.runId);
      await expectTerminatedFor(b, "orders", "sws", swsOld.runId, swsNew.runId);
      expect(await currentOn(b, "w")).toEqual({ runId: next.runId, status: "RUNNING" });
      expect(await currentOn(b, "sws")).toEqual({ runId: swsNew.runId, status: "RUNNING" });
    });

    test("TestTerminateIfRunningOnBAfterAFailoverReplicatesBackToA", async () => {
      const old = await wf(a).startWorkflowExecution({ namespace: "orders", workflowId: "back", ...T });
      await eventually(async () => expect(await currentOn(b, "back")).toEqual({ runId: old.runId, status: "RUNNING" }), { timeout: 20_000 });
      await wf(b).updateNamespace({ namespace: "orders", activeClusterName: "clusterB" });
      for (const x of [a, b]) await expectActiveOn(x, "orders", "clusterB", 2n);
      const next = await wf(b).startWorkflowExecution({ namespace: "orders", workflowId: "back", ...T, workflowIdReusePolicy: TIR });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 20_000 });
      await expectTerminatedFor(a, "orders", "back", old.runId, next.runId);
      expect(await currentOn(a, "back")).toEqual({ runId: next.runId, status: "RUNNING" });
      const versions = async (runId: string) =>
        (await wf(a).getWorkflowExecutionHistory({ namespace: "orders", execution: { workflowId: "back", runId } })).history!.events.map((e) => e.version);
      // The terminate and the new run were written on B, at its failover version.
      expect([await versions(old.runId), await versions(next.runId)]).toEqual([[1n, 2n], [2n]]);
    });
  });
}
