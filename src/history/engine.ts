import { create } from "@bufbuild/protobuf";
import { FailureSchema, type Failure, type Payloads, type WorkflowIdReusePolicy } from "../gen/tern/common/v1/common_pb";
import { NamespaceNotActiveError, connectionLost, failedPrecondition, invalidArgument, notFound, unavailable } from "../errors";
import type { NamespaceRecord, NamespaceRegistry } from "../namespace/registry";
import { payloadBytes, signalEvent } from "./events";
import { checkIdLengths, checkKeyBytes, textBytes } from "./id-limits";
import { NamespaceChanged } from "./namespace-guard";
import { claimRequestOrFail, lockRun, type ExecutionRow } from "./execution-store";
import type { EventNotifier } from "./notifier";
import { createRecentRows } from "./recent-rows";
import { firstResultOf, NO_EVENT } from "./request-reuse";
import { createWorkflowStarter } from "./start";
import type { Append, Writer, WriterDeps } from "./writer";
import { sleep } from "../sleep";

/** A run addressed by the caller: runId empty means the workflow's current run. */
export interface RunRef {
  namespace: string;
  workflowId: string;
  runId: string;
  requestId?: string;
  identity?: string;
  /** The call's signal (persistence/call-signal.ts): once it fired, the write does not commit. */
  callSignal?: AbortSignal;
}

export interface StartInput {
  namespace: string;
  workflowId: string;
  workflowType: string;
  taskQueue: string;
  input?: Payloads;
  executionTimeoutMs: number;
  requestId?: string;
  reusePolicy: WorkflowIdReusePolicy;
  identity?: string;
  /** SignalWithStart: a signal written right after the started event. */
  signal?: { name: string; input?: Payloads };
  /** The call's signal (persistence/call-signal.ts): once it fired, the write does not commit. */
  callSignal?: AbortSignal;
}

export interface EngineDeps extends WriterDeps {
  namespaces: NamespaceRegistry;
  notifier: EventNotifier;
  writer: Writer;
  /** Told of every new timer so the timer queue can wake in time. */
  onTimerCreated: (fireAt: Date) => void;
  /** How long a write waits out a graceful failover's HANDOVER before UNAVAILABLE. */
  handoverWaitMs?: number;
}

/** A run that can take events, or the reason it cannot. */
function requireOpen(run: ExecutionRow | undefined, ref: RunRef): ExecutionRow {
  if (!run) throw notFound(`workflow execution ${ref.workflowId}${ref.runId ? ` run ${ref.runId}` : ""} not found in namespace ${ref.namespace}`);
  if (run.status !== "RUNNING") {
    throw failedPrecondition(`workflow execution ${run.workflowId} run ${run.runId} is already closed (${run.status})`);
  }
  return run;
}

/** How many runs' rows the engine keeps from its own writes (recent-rows.ts): about 0.4 KB of heap each. */
export const ENGINE_RUN_CACHE_ROWS = 4096;

/** Creates the history engine: every mutation of workflow executions. */
export function createHistoryEngine(deps: EngineDeps) {
  const { namespaces, writer, notifier, metrics, cluster } = deps;

  const handoverWaitMs = deps.handoverWaitMs ?? 5000;
  /** Each workflow's current run ("namespaceId/workflowId") as this process's last write of it left it. */
  const runs = createRecentRows(ENGINE_RUN_CACHE_ROWS);
  const runKey = (namespaceId: string, workflowId: string) => `${namespaceId}/${workflowId}`;

  /** The namespace, if this cluster may write to it now; waits out a HANDOVER until deadline, or until the call's signal fires. */
  async function writableNamespace(name: string, deadline = 0, signal?: AbortSignal): Promise<NamespaceRecord> {
    for (let fresh = false; ; fresh = true) {
      const ns = fresh ? await namespaces.describe({ name }) : await namespaces.getByName(name);
      if (ns.state === "DELETED") throw notFound(`namespace ${name} not found`);
      if (ns.isGlobal && ns.activeClusterName !== cluster.clusterName) {
        throw new NamespaceNotActiveError(name, ns.activeClusterName);
      }
      if (ns.replicationState !== "HANDOVER") return ns;
      if (Date.now() >= deadline) throw unavailable(`namespace ${name} is in handover (a graceful failover is in progress); retry`);
      await sleep(50, signal);
      signal?.throwIfAborted();
    }
  }

  /** Runs a write against the namespace, again with a fresh read when it changed under the write (failover). */
  async function withWritable<T>(name: string, write: (ns: NamespaceRecord) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const deadline = Date.now() + handoverWaitMs;
    for (;;) {
      const ns = await writableNamespace(name, deadline, signal);
      try {
        return await write(ns);
      } catch (e) {
        if (!(e instanceof NamespaceChanged)) throw e;
        namespaces.invalidate(ns);
        if (Date.now() >= deadline) throw unavailable(`namespace ${name} changed during the write (${e.message}); retry`);
      }
    }
  }

  /** Appends to an open run, idempotent per requestId; returns the run and first new event id. */
  async function appendTo(
    operation: string,
    ref: RunRef,
    build: (run: ExecutionRow) => Append | undefined,
    payloadSize = 0,
  ): Promise<{ runId: string; eventId: number; appended: boolean }> {
    if (!ref.workflowId) throw invalidArgument("workflow id is required");
    // The run's ids before its lookup: a not-found answer (and its log line) quotes them.
    checkIdLengths(["workflow id", ref.workflowId], ["run id", ref.runId], ["identity", ref.identity]);
    checkKeyBytes(["request id", ref.requestId]);
    return withWritable(ref.namespace, async (ns) => {
      writer.checkBlob(payloadSize, operation, ns.name);
      const key = runKey(ns.id, ref.workflowId);
      const oneTrip = await appendInOneTrip(operation, ns, ref, build);
      // The run's row as this write leaves it, kept once it committed.
      let left: ExecutionRow | undefined;
      const result = oneTrip ?? await writer.transactPipelined(operation, async (tx, commit) => {
        // With BEGIN: the namespace check, then the run's row lock (the barrier before any row
        // lock, as a delete of the namespace takes them).
        const [, found] = await Promise.all([writer.guard(tx, ns), lockRun(tx, ns.id, ref.workflowId, ref.runId)]);
        const run = requireOpen(found, ref);
        const change = build(run);
        // With COMMIT: the claim fails for a retry of a request that went through before, which
        // rolls the write back; the catch below answers with where it went (a retry is rare, a
        // lookup per write is not).
        const claim = ref.requestId
          ? claimRequestOrFail(tx, { namespaceId: ns.id, workflowId: run.workflowId, requestId: ref.requestId, runId: run.runId, eventId: change ? run.nextEventId : NO_EVENT })
          : undefined;
        const appended = change ? writer.append(tx, ns, run, change, { guarded: true }) : undefined;
        commit();
        const [, written] = await Promise.all([claim, appended]);
        if (!change || !written) return { runId: run.runId, eventId: run.nextEventId - 1, appended: false };
        // An open run is its workflow's current run (one open run per workflow id), whether
        // addressed by id or not.
        left = written.row;
        return { runId: run.runId, eventId: written.firstEventId, appended: true, status: change.status };
      }, ref.callSignal).catch(async (e) => {
        left = undefined;
        runs.forget(key);
        // A retry answers with the first attempt's result, whatever this attempt ran into
        // (the run closed since, a marker's expected id moved on, a duplicate claim).
        const first = ref.requestId ? await firstResultOf(deps.db as never, operation, { namespaceId: ns.id, workflowId: ref.workflowId, requestId: ref.requestId }) : undefined;
        if (!first) throw e;
        return { runId: first.runId, eventId: first.eventId, appended: false };
      });
      if (left) runs.put(key, left);
      if (result.appended) {
        notifier.notify(result.runId);
        metrics.inc("history_writes", { operation, path: oneTrip ? "one-trip" : "read-first" });
      }
      if ("status" in result && result.status) countClose(result.status as string, ns.name);
      return result;
    }, ref.callSignal);
  }

  /**
   * appendTo's write in one round trip, from the workflow's current run as this process's
   * last write of it left it (the recent rows): one statement, a transaction of its own (the
   * namespace's barrier lock and check, the request id claim, the run's state, the events, the
   * timers' removal when it closes the run and the outbox task, writer.append's fromMemory,
   * writer.transactOneStatement). The namespace check and the state's db_version comparison
   * fail it from inside, as does a claim taken before; the write is then made again from a
   * fresh read, which also gives every refusal.
   * Undefined then, and when the kept row cannot decide the write alone (none, closed, another
   * run asked for by id, nothing to write, a refusal). A lost connection is not made again: its
   * statement may have committed.
   */
  async function appendInOneTrip(
    operation: string,
    ns: NamespaceRecord,
    ref: RunRef,
    build: (run: ExecutionRow) => Append | undefined,
  ): Promise<{ runId: string; eventId: number; appended: true; status?: string } | undefined> {
    const key = runKey(ns.id, ref.workflowId);
    const run = runs.get(key);
    if (!run || run.status !== "RUNNING" || (ref.runId && ref.runId !== run.runId)) return undefined;
    try {
      const change = build(run);
      if (!change) return undefined;
      // The namespace check and the request id's claim go in the write's one statement.
      const written = await writer.transactOneStatement(
        operation,
        (tx) => writer.append(tx, ns, run, change, { fromMemory: { requestId: ref.requestId || undefined } }),
        ref.callSignal,
      );
      runs.put(key, written.row);
      return { runId: run.runId, eventId: written.firstEventId, appended: true, status: change.status };
    } catch (e) {
      runs.forget(key);
      if (connectionLost(e)) throw e;
      // A check failed inside the statement (the kept row stale, the claim taken): nothing was
      // written. Past the call's signal the answer is the signal's, not that error's (INTERNAL).
      ref.callSignal?.throwIfAborted();
      return undefined;
    }
  }

  function countClose(status: string, namespace: string): void {
    const metric = { COMPLETED: "workflow_success", FAILED: "workflow_failed", TERMINATED: "workflow_terminate", TIMED_OUT: "workflow_timeout" }[status];
    if (metric) metrics.inc(metric, { namespace });
  }

  const start = createWorkflowStarter({ engine: deps, runs, runKey, withWritable, appendInOneTrip, countClose });

  return {
    start,
    signal: (ref: RunRef, name: string, input?: Payloads) => {
      if (!name) throw invalidArgument("signal name is required");
      checkIdLengths(["signal name", name]);
      return appendTo("SignalWorkflowExecution", ref, () => ({ events: [signalEvent(name, input, ref.identity, ref.requestId)] }), payloadBytes(input));
    },
    requestCancel: (ref: RunRef, reason: string) =>
      appendTo("RequestCancelWorkflowExecution", ref, (run) => {
        if (run.cancelRequested) return undefined; // already requested: nothing new to say
        return {
          cancelRequested: true,
          events: [{ attributes: { case: "workflowExecutionCancelRequestedEventAttributes", value: { reason, identity: ref.identity ?? "", requestId: ref.requestId ?? "" } as never } }],
        };
      }, textBytes(reason)).then((r) => {
        // Counted once written: a build may run twice (a write from a kept row made again).
        if (r.appended) metrics.inc("workflow_cancel", { namespace: ref.namespace });
        return r;
      }),
    terminate: (ref: RunRef, reason: string, details?: Payloads) =>
      appendTo("TerminateWorkflowExecution", ref, () => ({
        status: "TERMINATED",
        events: [{ attributes: { case: "workflowExecutionTerminatedEventAttributes", value: { reason, details, identity: ref.identity ?? "" } as never } }],
      }), payloadBytes(details) + textBytes(reason)),
    complete: (ref: RunRef, result?: Payloads) =>
      appendTo("CompleteWorkflowExecution", ref, () => ({
        status: "COMPLETED",
        events: [{ attributes: { case: "workflowExecutionCompletedEventAttributes", value: { result } as never } }],
      }), payloadBytes(result)),
    fail: (ref: RunRef, failure: Failure | undefined) =>
      appendTo("FailWorkflowExecution", ref, () => ({
        status: "FAILED",
        events: [{ attributes: { case: "workflowExecutionFailedEventAttributes", value: { failure: failure ?? create(FailureSchema) } as never } }],
      }), payloadBytes(failure?.details) + textBytes(failure?.message, failure?.type)),
    recordMarker: (ref: RunRef, name: string, details?: Payloads, expectedNextEventId?: number) => {
      if (!name) throw invalidArgument("marker name is required");
      checkIdLengths(["marker name", name]);
      return appendTo("RecordMarker", ref, (run) => {
        if (expectedNextEventId !== undefined && run.nextEventId !== expectedNextEventId) {
          throw failedPrecondition(`expected next event id ${expectedNextEventId} but the run's is ${run.nextEventId}`);
        }
        return { events: [{ attributes: { case: "markerRecordedEventAttributes", value: { markerName: name, details } as never } }] };
      }, payloadBytes(details));
    },
  };
}

export type HistoryEngine = ReturnType<typeof createHistoryEngine>;

