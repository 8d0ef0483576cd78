import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { durationFromMs, timestampFromDate, timestampMs } from "@bufbuild/protobuf/wkt";
import { EventType, WorkflowExecutionStatus, WorkflowIdReusePolicy } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowExecutionAlreadyStartedFailureSchema } from "../../src/gen/tern/errordetails/v1/message_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { json, unjson } from "../support/payload";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { rejects } from "../support/rejects";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "order", taskQueue: "q" };

for (const store of await testStores()) {
  describe(`workflow executions on ${store}`, () => {
    let cluster: TestCluster;
    let wf: ReturnType<typeof cluster.client<typeof WorkflowService>>;
    const ns = "wf";
    // How far the server's clock is behind the real one (a clock stepped back, or another server's).
    let clockBehindMs = 0;
    beforeAll(async () => {
      cluster = await startTestCluster({ store, serverOptions: { now: () => new Date(Date.now() - clockBehindMs) } });
      wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: ns });
    });
    afterAll(() => cluster.destroy());

    const history = async (workflowId: string, runId = "") =>
      (await wf.getWorkflowExecutionHistory({ namespace: ns, execution: { workflowId, runId }, maximumPageSize: 1000 })).history!.events;

    test("start, signal, cancel, marker and complete write events 1..n in order", async () => {
      const { runId, started } = await wf.startWorkflowExecution({ namespace: ns, workflowId: "a", ...T, input: json({ n: 1 }) });
      expect(started).toBe(true);
      const sig = await wf.signalWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "a" }, signalName: "go", input: json("x") });
      expect(sig).toMatchObject({ runId, eventId: 2n });
      await wf.requestCancelWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "a", runId }, reason: "r" });
      const marker = await wf.recordMarker({ namespace: ns, workflowExecution: { workflowId: "a" }, markerName: "m", expectedNextEventId: 4n });
      expect(marker.eventId).toBe(4n);
      await rejects(
        wf.recordMarker({ namespace: ns, workflowExecution: { workflowId: "a" }, markerName: "m", expectedNextEventId: 4n }),
        Code.FailedPrecondition,
        "expected next event id 4 but the run's is 5",
      );
      await wf.completeWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "a" }, result: json({ ok: true }) });
      const events = await history("a");
      expect(events.map((e) => e.eventType)).toEqual([
        EventType.WORKFLOW_EXECUTION_STARTED,
        EventType.WORKFLOW_EXECUTION_SIGNALED,
        EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED,
        EventType.MARKER_RECORDED,
        EventType.WORKFLOW_EXECUTION_COMPLETED,
      ]);
      expect(events.map((e) => e.eventId)).toEqual([1n, 2n, 3n, 4n, 5n]);
      expect(events.every((e) => e.version === 0n && e.eventTime)).toBe(true);
      const started1 = events[0]!.attributes;
      expect(started1.case === "workflowExecutionStartedEventAttributes" && unjson(started1.value.input)).toEqual({ n: 1 });
      const d = await wf.describeWorkflowExecution({ namespace: ns, execution: { workflowId: "a" } });
      expect(d.workflowExecutionInfo!.status).toBe(WorkflowExecutionStatus.COMPLETED);
      expect(d.workflowExecutionInfo!.historyLength).toBe(5n);
      expect(d.workflowExecutionInfo!.cancelRequested).toBe(true);
      expect(d.workflowExecutionInfo!.closeTime).toBeDefined();
    });

    test("a closed run takes no new events (FAILED_PRECONDITION)", async () => {
      await wf.startWorkflowExecution({ namespace: ns, workflowId: "closed", ...T });
      await wf.terminateWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "closed" }, reason: "stop" });
      for (const call of [
        () => wf.signalWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "closed" }, signalName: "s" }),
        () => wf.terminateWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "closed" }, reason: "again" }),
        () => wf.failWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "closed" }, failure: { message: "x" } }),
      ]) {
        await rejects(call(), Code.FailedPrecondition, "is already closed (TERMINATED)");
      }
      expect((await history("closed")).length).toBe(2);
    });

    test("a retried requestId returns the first result and writes no second event", async () => {
      const first = await wf.startWorkflowExecution({ namespace: ns, workflowId: "idem", ...T, requestId: "start-1" });
      const again = await wf.startWorkflowExecution({ namespace: ns, workflowId: "idem", ...T, requestId: "start-1" });
      expect(again).toMatchObject({ runId: first.runId, started: false });
      const s = { namespace: ns, workflowExecution: { workflowId: "idem" }, signalName: "s", requestId: "sig-1" };
      const results = await Promise.all(Array.from({ length: 8 }, () => wf.signalWorkflowExecution(s)));
      expect(new Set(results.map((r) => r.eventId))).toEqual(new Set([2n]));
      await wf.terminateWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "idem" }, reason: "r", requestId: "t-1" });
      await wf.terminateWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "idem" }, reason: "r", requestId: "t-1" });
      expect((await history("idem")).map((e) => e.eventType)).toEqual([
        EventType.WORKFLOW_EXECUTION_STARTED,
        EventType.WORKFLOW_EXECUTION_SIGNALED,
        EventType.WORKFLOW_EXECUTION_TERMINATED,
      ]);
    });

    test("a request id reused by another kind of request is refused, not answered with the first request's result", async () => {
      const { runId } = await wf.startWorkflowExecution({ namespace: ns, workflowId: "reuse", ...T, requestId: "reuse-start" });
      const run = { namespace: ns, workflowExecution: { workflowId: "reuse" } };
      const signalled = await wf.signalWorkflowExecution({ ...run, signalName: "s", requestId: "reuse-sig" });
      // Before: the signal answered event 1 (the start), the marker event 2 (the signal) and the
      // terminate OK, none of them written, the run still open.
      await rejects(wf.signalWorkflowExecution({ ...run, signalName: "s", requestId: "reuse-start" }), Code.InvalidArgument,
        `request id "reuse-start" was already used on workflow reuse by another kind of request (event 1 of run ${runId} is WORKFLOW_EXECUTION_STARTED)`);
      await rejects(wf.recordMarker({ ...run, markerName: "m", requestId: "reuse-sig" }), Code.InvalidArgument, 'request id "reuse-sig" was already used');
      await rejects(wf.terminateWorkflowExecution({ ...run, reason: "r", requestId: "reuse-sig" }), Code.InvalidArgument, 'request id "reuse-sig" was already used');
      await rejects(wf.startWorkflowExecution({ namespace: ns, workflowId: "reuse", ...T, requestId: "reuse-sig" }), Code.InvalidArgument, 'request id "reuse-sig" was already used');
      // A retry of the same kind still answers with the first result.
      expect(await wf.signalWorkflowExecution({ ...run, signalName: "s", requestId: "reuse-sig" })).toMatchObject({ eventId: signalled.eventId });
      expect((await history("reuse")).map((e) => e.eventType)).toEqual([EventType.WORKFLOW_EXECUTION_STARTED, EventType.WORKFLOW_EXECUTION_SIGNALED]);
      await wf.terminateWorkflowExecution({ ...run, reason: "r", requestId: "reuse-end" });
      await rejects(wf.startWorkflowExecution({ namespace: ns, workflowId: "reuse", ...T, requestId: "reuse-end", workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE }),
        Code.InvalidArgument, 'request id "reuse-end" was already used');
    });

    test("TestNoSignalIsAnsweredAsWrittenFromAStartsOrANoOpCancelsRequestId: both are refused, not answered with the first request's result", async () => {
      const { runId } = await wf.startWorkflowExecution({ namespace: ns, workflowId: "quiet", ...T, requestId: "quiet-start" });
      const run = { namespace: ns, workflowExecution: { workflowId: "quiet" } };
      // Before: signal-with-start answered the start's run and wrote no signal.
      await rejects(wf.signalWithStartWorkflowExecution({ namespace: ns, workflowId: "quiet", ...T, signalName: "s", requestId: "quiet-start" }),
        Code.InvalidArgument, `request id "quiet-start" was already used on workflow quiet by another kind of request (it started run ${runId} without a signal)`);
      await wf.requestCancelWorkflowExecution({ ...run, requestId: "quiet-cancel-1" });
      await wf.requestCancelWorkflowExecution({ ...run, requestId: "quiet-cancel-2" }); // already requested: writes nothing
      await wf.requestCancelWorkflowExecution({ ...run, requestId: "quiet-cancel-2" }); // its retry still answers
      // Before: the signal answered event 3, an event no request wrote, and wrote none.
      await rejects(wf.signalWorkflowExecution({ ...run, signalName: "s", requestId: "quiet-cancel-2" }),
        Code.InvalidArgument, `request id "quiet-cancel-2" was already used on workflow quiet by another kind of request (it wrote no event on run ${runId})`);
      // A signal-with-start's own retry, of the run it started, still answers with it.
      const sws = { namespace: ns, workflowId: "quiet-sws", ...T, signalName: "s", requestId: "quiet-sws-1" };
      const started = await wf.signalWithStartWorkflowExecution(sws);
      expect(await wf.signalWithStartWorkflowExecution(sws)).toMatchObject({ runId: started.runId, started: false });
      expect((await history("quiet")).map((e) => e.eventType)).toEqual([EventType.WORKFLOW_EXECUTION_STARTED, EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED]);
      expect((await history("quiet-sws")).map((e) => e.eventType)).toEqual([EventType.WORKFLOW_EXECUTION_STARTED, EventType.WORKFLOW_EXECUTION_SIGNALED]);
    });

    test("an execution timeout under 1 ms is 1 ms, not none", async () => {
      // Before: 0.5 ms was read as 0, no timeout: the run stayed open for good.
      await wf.startWorkflowExecution({ namespace: ns, workflowId: "tiny-timeout", ...T, workflowExecutionTimeout: { seconds: 0n, nanos: 500_000 } });
      const info = (await wf.describeWorkflowExecution({ namespace: ns, execution: { workflowId: "tiny-timeout" } })).workflowExecutionInfo!;
      expect(info.workflowExecutionTimeout).toMatchObject({ seconds: 0n, nanos: 1_000_000 });
      await rejects(wf.startWorkflowExecution({ namespace: ns, workflowId: "negative", ...T, workflowExecutionTimeout: { seconds: 0n, nanos: -500_000 } }),
        Code.InvalidArgument, "workflow execution timeout must not be negative");
    });

    test("at most one open run per workflowId, even under concurrent starts", async () => {
      const results = await Promise.allSettled(
        Array.from({ length: 10 }, () => wf.startWorkflowExecution({ namespace: ns, workflowId: "race", ...T })),
      );
      expect(results.filter((r) => r.status === "fulfilled").length).toBe(1);
      for (const r of results) if (r.status === "rejected") expect(String(r.reason)).toContain("already running");
      const list = await wf.listWorkflowExecutions({ namespace: ns, workflowIdPrefix: "race" });
      expect(list.executions.length).toBe(1);
    });

    test("workflow id reuse policies", async () => {
      const start = (id: string, p: WorkflowIdReusePolicy) =>
        wf.startWorkflowExecution({ namespace: ns, workflowId: id, ...T, workflowIdReusePolicy: p });
      const close = (id: string, how: "complete" | "fail") =>
        how === "complete"
          ? wf.completeWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: id } })
          : wf.failWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: id }, failure: { message: "boom" } });
      await start("reuse-ok", WorkflowIdReusePolicy.ALLOW_DUPLICATE);
      await close("reuse-ok", "complete");
      const second = await start("reuse-ok", WorkflowIdReusePolicy.ALLOW_DUPLICATE);
      const started = (await history("reuse-ok", second.runId))[0]!.attributes;
      expect(started.case === "workflowExecutionStartedEventAttributes" && started.value.previousRunId).not.toBe("");
      await start("reuse-fail", WorkflowIdReusePolicy.ALLOW_DUPLICATE);
      await close("reuse-fail", "complete");
      await rejects(start("reuse-fail", WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY), Code.AlreadyExists, "previous run ended COMPLETED");
      await start("reuse-f2", WorkflowIdReusePolicy.ALLOW_DUPLICATE);
      await close("reuse-f2", "fail");
      await start("reuse-f2", WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY);
      await start("reuse-no", WorkflowIdReusePolicy.REJECT_DUPLICATE);
      await close("reuse-no", "fail");
      await rejects(start("reuse-no", WorkflowIdReusePolicy.REJECT_DUPLICATE), Code.AlreadyExists, "reject-duplicate");
    });

    test("TestAlreadyStartedNamesTheCurrentRun: every ALREADY_EXISTS of a start carries the run in its message and a WorkflowExecutionAlreadyStartedFailure detail", async () => {
      const start = (p: WorkflowIdReusePolicy, requestId = "") =>
        wf.startWorkflowExecution({ namespace: ns, workflowId: "named", ...T, workflowIdReusePolicy: p, requestId });
      const refusedWith = async (call: Promise<unknown>, text: string, run: { runId: string; startRequestId: string }) => {
        const e = await rejects(call, Code.AlreadyExists, `${text} (run ${run.runId})`);
        expect(e.findDetails(WorkflowExecutionAlreadyStartedFailureSchema)).toMatchObject([run]);
      };
      const first = await start(WorkflowIdReusePolicy.ALLOW_DUPLICATE, "named-1");
      await refusedWith(start(WorkflowIdReusePolicy.ALLOW_DUPLICATE), "is already running", { runId: first.runId, startRequestId: "named-1" });
      await wf.completeWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "named" } });
      // Before: the reuse policy's refusals named no run, and none had a detail.
      await refusedWith(start(WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY), "previous run ended COMPLETED", { runId: first.runId, startRequestId: "named-1" });
      await refusedWith(start(WorkflowIdReusePolicy.REJECT_DUPLICATE), "reject-duplicate and a run with this id already exists", { runId: first.runId, startRequestId: "named-1" });
      const sws = wf.signalWithStartWorkflowExecution({ namespace: ns, workflowId: "named", ...T, signalName: "s", workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE });
      await refusedWith(sws, "reject-duplicate and a run with this id already exists", { runId: first.runId, startRequestId: "named-1" });
      // Starts racing: each loser names the winner, whichever path refused it.
      const calls = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => start(WorkflowIdReusePolicy.ALLOW_DUPLICATE, `named-race-${i}`)));
      const won = calls.flatMap((c, i) => (c.status === "fulfilled" ? [{ runId: c.value.runId, startRequestId: `named-race-${i}` }] : []));
      expect(won).toHaveLength(1);
      for (const c of calls) if (c.status === "rejected") await refusedWith(Promise.reject(c.reason), "is already running", won[0]!);
    });

    test("TestANewRunStaysTheCurrentOneWhenTheClockStepsBack: the reuse policy and the next run's previous run are the latest run's", async () => {
      const start = (p = WorkflowIdReusePolicy.ALLOW_DUPLICATE) => wf.startWorkflowExecution({ namespace: ns, workflowId: "clock", ...T, workflowIdReusePolicy: p });
      const current = async () => (await wf.describeWorkflowExecution({ namespace: ns, execution: { workflowId: "clock" } })).workflowExecutionInfo!.execution!.runId;
      await start();
      await wf.failWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "clock" }, failure: { message: "x" } });
      clockBehindMs = 60_000;
      try {
        const second = await start();
        await wf.completeWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "clock" } });
        // Before: the second run, started a minute "earlier", sorted behind the first: the first
        // (FAILED) was the current run, and allow-duplicate-failed-only started a third run.
        expect(await current()).toBe(second.runId);
        await rejects(start(WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY), Code.AlreadyExists, `previous run ended COMPLETED (run ${second.runId})`);
        const third = await start();
        const started = (await history("clock", third.runId))[0]!.attributes;
        expect(started.case === "workflowExecutionStartedEventAttributes" && started.value.previousRunId).toBe(second.runId);
        expect(await current()).toBe(third.runId);
      } finally {
        clockBehindMs = 0;
      }
    });

    test("TestACloseIsNotBeforeItsStartWhenTheClockStepsBack", async () => {
      const { runId } = await wf.startWorkflowExecution({ namespace: ns, workflowId: "clock-close", ...T });
      clockBehindMs = 60_000;
      try {
        await wf.completeWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "clock-close", runId } });
      } finally {
        clockBehindMs = 0;
      }
      const info = (await wf.describeWorkflowExecution({ namespace: ns, execution: { workflowId: "clock-close", runId } })).workflowExecutionInfo!;
      // Before: the close a minute before the start. The close event carries the same time: a
      // passive cluster takes the close time from it.
      expect(timestampMs(info.closeTime!)).toBeGreaterThanOrEqual(timestampMs(info.startTime!));
      const closed = (await history("clock-close", runId)).at(-1)!;
      expect(closed.eventType).toBe(EventType.WORKFLOW_EXECUTION_COMPLETED);
      expect(timestampMs(closed.eventTime!)).toBe(timestampMs(info.closeTime!));
    });

    test("signal-with-start starts once, then signals the open run", async () => {
      const req = { namespace: ns, workflowId: "sws", ...T, signalName: "hello", signalInput: json(1) };
      const a = await wf.signalWithStartWorkflowExecution(req);
      const b = await wf.signalWithStartWorkflowExecution({ ...req, signalInput: json(2) });
      expect(a.started).toBe(true);
      expect(b).toMatchObject({ runId: a.runId, started: false });
      const events = await history("sws");
      expect(events.map((e) => e.eventType)).toEqual([
        EventType.WORKFLOW_EXECUTION_STARTED,
        EventType.WORKFLOW_EXECUTION_SIGNALED,
        EventType.WORKFLOW_EXECUTION_SIGNALED,
      ]);
    });

    test("history pages with tokens; waitNewEvent long-polls until a new event", async () => {
      await wf.startWorkflowExecution({ namespace: ns, workflowId: "pages", ...T });
      for (let i = 0; i < 6; i++) await wf.signalWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "pages" }, signalName: `s${i}` });
      const ids: bigint[] = [];
      let token: Uint8Array = new Uint8Array();
      do {
        const page = await wf.getWorkflowExecutionHistory({ namespace: ns, execution: { workflowId: "pages" }, maximumPageSize: 3, nextPageToken: token });
        ids.push(...page.history!.events.map((e) => e.eventId));
        token = page.nextPageToken;
      } while (token.length);
      expect(ids).toEqual([1n, 2n, 3n, 4n, 5n, 6n, 7n]);
      const tail = await wf.getWorkflowExecutionHistory({ namespace: ns, execution: { workflowId: "pages" }, waitNewEvent: true, maximumPageSize: 100 });
      expect(tail.history!.events.length).toBe(7);
      const poll = wf.getWorkflowExecutionHistory({
        namespace: ns, execution: { workflowId: "pages" }, waitNewEvent: true, nextPageToken: tail.nextPageToken, waitTimeout: durationFromMs(10_000),
      });
      const began = Date.now();
      await new Promise((r) => setTimeout(r, 150));
      await wf.completeWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "pages" } });
      const woke = await poll;
      expect(Date.now() - began).toBeLessThan(5000);
      expect(woke.history!.events.map((e) => e.eventType)).toEqual([EventType.WORKFLOW_EXECUTION_COMPLETED]);
      expect(woke.nextPageToken.length).toBe(0); // closed and every event returned: the follow ends
    });

    test("list filters by status, type, id prefix and start time, and pages", async () => {
      const lns = "listing";
      await wf.registerNamespace({ namespace: lns });
      const before = new Date();
      for (let i = 0; i < 5; i++) await wf.startWorkflowExecution({ namespace: lns, workflowId: `job-${i}`, workflowType: i % 2 ? "odd" : "even", taskQueue: "q" });
      await wf.startWorkflowExecution({ namespace: lns, workflowId: "other", workflowType: "even", taskQueue: "q" });
      await wf.completeWorkflowExecution({ namespace: lns, workflowExecution: { workflowId: "job-0" } });
      const all = async (req: Parameters<typeof wf.listWorkflowExecutions>[0]) => {
        const ids: string[] = [];
        let token: Uint8Array = new Uint8Array();
        do {
          const r = await wf.listWorkflowExecutions({ namespace: lns, pageSize: 2, ...req, nextPageToken: token });
          ids.push(...r.executions.map((e) => e.execution!.workflowId));
          token = r.nextPageToken;
        } while (token.length);
        return ids.sort();
      };
      expect(await all({})).toEqual(["job-0", "job-1", "job-2", "job-3", "job-4", "other"]);
      expect(await all({ status: WorkflowExecutionStatus.COMPLETED })).toEqual(["job-0"]);
      expect(await all({ status: WorkflowExecutionStatus.RUNNING, workflowType: "even" })).toEqual(["job-2", "job-4", "other"]);
      expect(await all({ workflowIdPrefix: "job-" })).toHaveLength(5);
      expect(await all({ startTimeMin: timestampFromDate(new Date(Date.now() + 60_000)) })).toEqual([]);
      expect(await all({ startTimeMin: timestampFromDate(before) })).toHaveLength(6);
      expect(await all({ workflowIdPrefix: "job_" })).toEqual([]); // "_" is literal, not a wildcard
    });

    test("bad requests are INVALID_ARGUMENT or NOT_FOUND with clear messages", async () => {
      await rejects(wf.startWorkflowExecution({ namespace: ns, workflowId: "", ...T }), Code.InvalidArgument, "workflow id is required");
      await rejects(wf.startWorkflowExecution({ namespace: ns, workflowId: "x", workflowType: "", taskQueue: "q" }), Code.InvalidArgument, "workflow type is required");
      await rejects(wf.startWorkflowExecution({ namespace: "nope", workflowId: "x", ...T }), Code.NotFound, "namespace nope not found");
      await rejects(wf.signalWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "ghost" }, signalName: "s" }), Code.NotFound, "workflow execution ghost not found");
      await rejects(wf.signalWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "a" }, signalName: "" }), Code.InvalidArgument, "signal name is required");
      await rejects(
        wf.getWorkflowExecutionHistory({ namespace: ns, execution: { workflowId: "a" }, nextPageToken: new TextEncoder().encode("garbage") }),
        Code.InvalidArgument,
        "next_page_token is not valid",
      );
    });
  });
}
