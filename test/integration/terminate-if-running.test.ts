import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { EventType, WorkflowExecutionStatus, WorkflowIdReusePolicy } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { json, unjson } from "../support/payload";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { expectTerminatedFor } from "../support/terminated-for";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "order", taskQueue: "q" };
const TIR = WorkflowIdReusePolicy.TERMINATE_IF_RUNNING;

/** The reads these tests make of namespace ns on cluster x. */
function readsOf(x: TestCluster, ns: string) {
  const wf = x.client(WorkflowService);
  const history = async (workflowId: string, runId = "") =>
    (await wf.getWorkflowExecutionHistory({ namespace: ns, execution: { workflowId, runId }, maximumPageSize: 1000 })).history!.events;
  return {
    history,
    types: async (workflowId: string, runId = "") => (await history(workflowId, runId)).map((e) => EventType[e.eventType]),
    info: async (workflowId: string, runId = "") => (await wf.describeWorkflowExecution({ namespace: ns, execution: { workflowId, runId } })).workflowExecutionInfo!,
    runs: async (workflowId: string) => (await wf.listWorkflowExecutions({ namespace: ns, workflowIdPrefix: workflowId, pageSize: 100 })).executions.filter((e) => e.execution!.workflowId === workflowId),
  };
}

for (const store of await testStores()) {
  describe(`workflow id reuse policy terminate-if-running on ${store}`, () => {
    let cluster: TestCluster;
    let wf: ReturnType<typeof cluster.client<typeof WorkflowService>>;
    let reads: ReturnType<typeof readsOf>;
    const ns = "tir";
    beforeAll(async () => {
      cluster = await startTestCluster({ store });
      wf = cluster.client(WorkflowService);
      reads = readsOf(cluster, ns);
      await wf.registerNamespace({ namespace: ns });
    });
    afterAll(() => cluster.destroy());

    const start = (workflowId: string, requestId = "", policy = TIR) =>
      wf.startWorkflowExecution({ namespace: ns, workflowId, ...T, requestId, workflowIdReusePolicy: policy });

    test("TestStartOverAnOpenRunTerminatesItAndStartsTheNewRun: in one transaction, the new run current", async () => {
      const old = await start("w", "w-1", WorkflowIdReusePolicy.ALLOW_DUPLICATE);
      await wf.signalWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "w" }, signalName: "s" });
      // Before: INVALID_ARGUMENT, "terminate-if-running is not served".
      const next = await start("w", "w-2");
      expect(next.started).toBe(true);
      expect(next.runId).not.toBe(old.runId);
      expect(await reads.types("w", old.runId)).toEqual(["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_SIGNALED", "WORKFLOW_EXECUTION_TERMINATED"]);
      await expectTerminatedFor(cluster, ns, "w", old.runId, next.runId);
      const current = await reads.info("w");
      expect([current.execution!.runId, current.status]).toEqual([next.runId, WorkflowExecutionStatus.RUNNING]);
      const started = (await reads.history("w", next.runId))[0]!.attributes;
      expect(started.case === "workflowExecutionStartedEventAttributes" && [started.value.previousRunId, started.value.requestId]).toEqual([old.runId, "w-2"]);
      // The old run closes no later than the new one starts.
      expect((await reads.info("w", old.runId)).closeTime!.seconds).toBeLessThanOrEqual(current.startTime!.seconds);
      // A third start terminates the second run in turn.
      const third = await start("w", "w-3");
      await expectTerminatedFor(cluster, ns, "w", next.runId, third.runId);
      expect((await reads.runs("w")).map((r) => WorkflowExecutionStatus[r.status]).sort()).toEqual(["RUNNING", "TERMINATED", "TERMINATED"]);
      const metrics = await (await fetch(`${cluster.url}/metrics`)).text();
      expect(metrics).toMatch(/workflow_terminate\{namespace="tir"\} 2\b/);
    });

    test("TestARetriedTerminateIfRunningStartAnswersItsRunAndTerminatesNothingMore", async () => {
      await start("retry", "retry-1");
      const second = await start("retry", "retry-2");
      const again = await start("retry", "retry-2");
      expect(again).toMatchObject({ runId: second.runId, started: false });
      // Its run is still open, with its one event, and no third run was started.
      expect(await reads.types("retry", second.runId)).toEqual(["WORKFLOW_EXECUTION_STARTED"]);
      expect((await reads.info("retry")).execution!.runId).toBe(second.runId);
      expect(await reads.runs("retry")).toHaveLength(2);
      // After its run closed and another started, a retry still answers its run.
      await wf.completeWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "retry" } });
      const fourth = await start("retry", "retry-4");
      expect(await start("retry", "retry-2")).toMatchObject({ runId: second.runId, started: false });
      expect((await reads.info("retry")).execution!.runId).toBe(fourth.runId);
      expect(await reads.runs("retry")).toHaveLength(3);
    });

    test("TestSignalWithStartTerminatesTheOpenRunAndStartsANewOneWithTheSignal (as Temporal's history service)", async () => {
      const old = await wf.signalWithStartWorkflowExecution({ namespace: ns, workflowId: "sws", ...T, signalName: "first", requestId: "sws-1" });
      const req = { namespace: ns, workflowId: "sws", ...T, signalName: "again", signalInput: json(2), requestId: "sws-2", workflowIdReusePolicy: TIR };
      const next = await wf.signalWithStartWorkflowExecution(req);
      expect(next.started).toBe(true);
      expect(next.runId).not.toBe(old.runId);
      await expectTerminatedFor(cluster, ns, "sws", old.runId, next.runId);
      expect(await reads.types("sws", old.runId)).toEqual(["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_SIGNALED", "WORKFLOW_EXECUTION_TERMINATED"]);
      const events = await reads.history("sws", next.runId);
      expect(events.map((e) => EventType[e.eventType])).toEqual(["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_SIGNALED"]);
      const signal = events[1]!.attributes;
      expect(signal.case === "workflowExecutionSignaledEventAttributes" && [signal.value.signalName, unjson(signal.value.input)]).toEqual(["again", 2]);
      // Retried: the same run, nothing more written.
      expect(await wf.signalWithStartWorkflowExecution(req)).toMatchObject({ runId: next.runId, started: false });
      expect(await reads.types("sws", next.runId)).toEqual(["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_SIGNALED"]);
      expect(await reads.runs("sws")).toHaveLength(2);
    });

    test("TestTerminateIfRunningWithNoOpenRunIsAllowDuplicate", async () => {
      const first = await start("none", "none-1");
      expect(first.started).toBe(true);
      expect(await reads.types("none", first.runId)).toEqual(["WORKFLOW_EXECUTION_STARTED"]);
      await wf.completeWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "none" } });
      const second = await start("none", "none-2");
      // The closed run stays as it closed.
      expect(await reads.types("none", first.runId)).toEqual(["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_COMPLETED"]);
      expect((await reads.info("none")).execution!.runId).toBe(second.runId);
      const sws = await wf.signalWithStartWorkflowExecution({ namespace: ns, workflowId: "none-sws", ...T, signalName: "s", workflowIdReusePolicy: TIR });
      expect(sws.started).toBe(true);
    });

    test("TestTerminateIfRunningInJsonAsInBinary: Connect JSON names the policy, binary numbers it", async () => {
      const call = (method: string, extra: object) =>
        fetch(`${cluster.url}/tern.workflow.v1.WorkflowService/${method}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ namespace: ns, workflowId: "json", ...T, workflowIdReusePolicy: "WORKFLOW_ID_REUSE_POLICY_TERMINATE_IF_RUNNING", ...extra }),
        }).then(async (r) => ({ status: r.status, ...(await r.json()) }));
      const first = await call("StartWorkflowExecution", {});
      expect(first).toMatchObject({ status: 200, started: true });
      const second = await call("StartWorkflowExecution", {});
      expect(second).toMatchObject({ status: 200, started: true });
      await expectTerminatedFor(cluster, ns, "json", first.runId, second.runId);
      const third = await call("SignalWithStartWorkflowExecution", { signalName: "s" });
      expect(third).toMatchObject({ status: 200, started: true });
      await expectTerminatedFor(cluster, ns, "json", second.runId, third.runId);
      expect(await reads.types("json", third.runId)).toEqual(["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_SIGNALED"]);
      // The test clients speak JSON: binary too.
      const binary = createClient(WorkflowService, createConnectTransport({ baseUrl: cluster.url, useBinaryFormat: true }));
      const fourth = await binary.startWorkflowExecution({ namespace: ns, workflowId: "json", ...T, workflowIdReusePolicy: TIR });
      await expectTerminatedFor(cluster, ns, "json", third.runId, fourth.runId);
      const fifth = await binary.signalWithStartWorkflowExecution({ namespace: ns, workflowId: "json", ...T, signalName: "s", workflowIdReusePolicy: TIR });
      await expectTerminatedFor(cluster, ns, "json", fourth.runId, fifth.runId);
    });

    test("TestConcurrentTerminateIfRunningStartsLeaveOneOpenRun: each terminates the one before it", async () => {
      await start("race", "race-0");
      const starts = await Promise.all(Array.from({ length: 4 }, (_, i) => start("race", `race-${i + 1}`)));
      expect(starts.every((s) => s.started)).toBe(true);
      const runs = await reads.runs("race");
      expect(runs).toHaveLength(5);
      expect(runs.filter((r) => r.status === WorkflowExecutionStatus.RUNNING)).toHaveLength(1);
      expect(runs.filter((r) => r.status === WorkflowExecutionStatus.TERMINATED)).toHaveLength(4);
    });

    test("TestOtherPoliciesStillRefuseAnOpenRun", async () => {
      const { runId } = await start("others", "others-1");
      for (const p of [WorkflowIdReusePolicy.UNSPECIFIED, WorkflowIdReusePolicy.ALLOW_DUPLICATE, WorkflowIdReusePolicy.REJECT_DUPLICATE]) {
        await rejects(start("others", "", p), Code.AlreadyExists, `is already running (run ${runId})`);
      }
      // SignalWithStart under them signals the open run.
      const s = await wf.signalWithStartWorkflowExecution({ namespace: ns, workflowId: "others", ...T, signalName: "s", workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE });
      expect(s).toMatchObject({ runId, started: false });
    });
  });

  // A start whose transaction fails at its end (the server's test hook throws before COMMIT):
  // neither the terminate nor the new run is written.
  describe(`terminate-if-running is atomic on ${store}`, () => {
    let cluster: TestCluster;
    let failing = false;
    beforeAll(async () => {
      cluster = await startTestCluster({
        store,
        serverOptions: {
          beforeCommit: (operation) => {
            if (failing && operation === "CreateWorkflowExecution") throw new Error("injected failure before commit");
          },
        },
      });
      await cluster.client(WorkflowService).registerNamespace({ namespace: "atomic" });
    });
    afterAll(() => cluster.destroy());

    test("TestAFailedTerminateIfRunningStartLeavesTheOpenRunOpen", async () => {
      const wf = cluster.client(WorkflowService);
      const reads = readsOf(cluster, "atomic");
      const { runId } = await wf.startWorkflowExecution({ namespace: "atomic", workflowId: "a", ...T });
      failing = true;
      try {
        await rejects(wf.startWorkflowExecution({ namespace: "atomic", workflowId: "a", ...T, requestId: "a-2", workflowIdReusePolicy: TIR }), Code.Internal, "");
      } finally {
        failing = false;
      }
      expect(await reads.types("a", runId)).toEqual(["WORKFLOW_EXECUTION_STARTED"]);
      expect((await reads.info("a")).status).toBe(WorkflowExecutionStatus.RUNNING);
      expect(await reads.runs("a")).toHaveLength(1);
      // Its retry then goes through whole.
      const next = await wf.startWorkflowExecution({ namespace: "atomic", workflowId: "a", ...T, requestId: "a-2", workflowIdReusePolicy: TIR });
      await expectTerminatedFor(cluster, "atomic", "a", runId, next.runId);
    });
  });
}
