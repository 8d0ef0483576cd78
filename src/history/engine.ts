import { create } from "@bufbuild/protobuf";
import { ulid } from "ulid";
import {
  FailureSchema,
  WorkflowIdReusePolicy,
  type Failure,
  type Payloads,
} from "../gen/tern/common/v1/common_pb";
import { NamespaceNotActiveError, alreadyExists, connectionLost, failedPrecondition, invalidArgument, notFound, pgErrorOf, unavailable } from "../errors";
import type { NamespaceRecord, NamespaceRegistry } from "../namespace/registry";
import type { Tx } from "../persistence/database";
import type { StatementPart } from "../persistence/raw-statements";
import { payloadBytes } from "./events";
import { alreadyStarted, currentRun, StartRefused } from "./already-started";
import { checkIdLengths, checkKeyBytes, textBytes } from "./id-limits";
import { NamespaceChanged } from "./namespace-guard";
import { claimRequestOrFail, claimRequestPart, insertEvents, insertExecution, insertExecutionPart, insertTimer, insertTimerPart, lockRun, NEW_RUN, noRunPart, RunExistsError, type ExecutionRow, type NewEvent } from "./execution-store";
import type { EventNotifier } from "./notifier";
import { createRecentRows, insertedRow } from "./recent-rows";
import { firstResultOf, NO_EVENT } from "./request-reuse";
import { onOpenRun, reuseRefusal, terminateForNewRun } from "./reuse-policy";
import { shardFor } from "./shard";
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

  /**
   * startIn's write in one round trip. For a workflow id this process knows no run of, one
   * statement, a transaction of its own: the namespace's barrier lock and check, a check that
   * the id has no run at all, the request id claim, the run's row, its events, timer and outbox
   * task. For SignalWithStart on the run this process wrote last: the signal, if
   * appendInOneTrip can write it. Undefined for a plain start, or a terminate-if-running one,
   * of an id this process knows a run of, and when a check failed: the start is then made from
   * a read, which gives every refusal and the reuse policy's answer.
   * A lost connection is not made again: its statement may have committed.
   */
  async function startInOneTrip(
    operation: string,
    ns: NamespaceRecord,
    input: StartInput,
    requestId: string,
    runId: string,
  ): Promise<{ runId: string; started: boolean; fireAt?: Date } | undefined> {
    const key = runKey(ns.id, input.workflowId);
    const known = runs.get(key);
    if (known) {
      const { signal } = input;
      if (!signal || onOpenRun(input.reusePolicy, true) !== "signal") return undefined;
      const ref = { namespace: input.namespace, workflowId: input.workflowId, runId: "", requestId, callSignal: input.callSignal };
      const signalled = await appendInOneTrip(operation, ns, ref, () => ({ events: [signalEvent(signal.name, signal.input, input.identity, requestId)] }));
      return signalled && { runId: signalled.runId, started: false };
    }
    try {
      const written = await writer.transactOneStatement(operation, (tx) => {
        // One statement (writer.oneStatement): the namespace check, the id has no run, the claim, the run.
        const checks = [noRunPart(ns.id, input.workflowId), claimRequestPart({ namespaceId: ns.id, workflowId: input.workflowId, requestId, runId, eventId: 1 })];
        return insertRun(tx, ns, { ...input, requestId }, runId, undefined, checks);
      }, input.callSignal);
      runs.put(key, written.row);
      return { runId, started: true, fireAt: written.fireAt };
    } catch (e) {
      if (connectionLost(e)) throw e;
      // As in appendInOneTrip: a failed check wrote nothing; past the signal, the signal answers.
      input.callSignal?.throwIfAborted();
      return undefined;
    }
  }

  function countClose(status: string, namespace: string): void {
    const metric = { COMPLETED: "workflow_success", FAILED: "workflow_failed", TERMINATED: "workflow_terminate", TIMED_OUT: "workflow_timeout" }[status];
    if (metric) metrics.inc(metric, { namespace });
  }

  /**
   * Inserts a new run (with its started event, optional signal, timer and outbox task). Not
   * async: every statement is issued before it returns (pipelined-tx.ts). With checks, as one
   * statement with them and the namespace check (writer.oneStatement), failing with
   * RunExistsError when a check does.
   */
  function insertRun(
    tx: Tx,
    ns: NamespaceRecord,
    input: StartInput,
    runId: string,
    previous?: ExecutionRow,
    checks?: StatementPart[],
  ): Promise<{ fireAt?: Date; row: ExecutionRow }> {
    // After the previous run's start whatever the clock says (stepped back, or another server's
    // behind the one that started it): the current run is the one started last (CURRENT_RUN_ORDER).
    const now = deps.now();
    const time = previous && now <= previous.startTime ? new Date(previous.startTime.getTime() + 1) : now;
    const shardId = shardFor(ns.id, input.workflowId, cluster.historyShardCount);
    const key = { namespaceId: ns.id, workflowId: input.workflowId, runId };
    const events: NewEvent[] = [
      {
        attributes: {
          case: "workflowExecutionStartedEventAttributes",
          value: {
            workflowType: input.workflowType,
            taskQueue: input.taskQueue,
            input: input.input,
            executionTimeoutMs: BigInt(input.executionTimeoutMs),
            requestId: input.requestId ?? "",
            identity: input.identity ?? "",
            previousRunId: previous?.runId ?? "",
          } as never,
        },
      },
    ];
    if (input.signal) events.push(signalEvent(input.signal.name, input.signal.input, input.identity, input.requestId));
    const history = [{ eventId: events.length, version: ns.failoverVersion }];
    const fireAt = input.executionTimeoutMs > 0 ? new Date(time.getTime() + input.executionTimeoutMs) : undefined;
    // Pipelined: the run's row, its events, its timer and the outbox task go out together.
    const row = insertedRow({
      ...key,
      shardId,
      workflowType: input.workflowType,
      taskQueue: input.taskQueue,
      status: "RUNNING",
      startTime: time,
      executionTimeoutMs: input.executionTimeoutMs,
      nextEventId: 1 + events.length,
      lastWriteVersion: ns.failoverVersion,
      versionHistory: history,
    });
    const timer = fireAt && { id: ulid(), shardId, fireAt, kind: "WORKFLOW_TIMEOUT", ...key, version: ns.failoverVersion };
    if (checks) {
      return writer.oneStatement(tx, ns, {
        checks, row: insertExecutionPart(row), after: NEW_RUN, key: { ...key, shardId }, first: 1, events, time, history,
        extra: timer ? [insertTimerPart(timer)] : [],
        failure: () => new RunExistsError(`workflow ${input.workflowId} has a run, or namespace ${ns.name} is no longer writable here`),
      }).then(() => ({ fireAt, row }));
    }
    return Promise.all([
      insertExecution(tx, row),
      insertEvents(tx, key, 1, ns.failoverVersion, time, events, []),
      timer && insertTimer(tx, timer),
      writer.outbox(tx, ns, { ...key, shardId }, 1, events, time, history),
    ]).then(() => ({ fireAt, row }));
  }

  /** Starts a run, or, with signal set and a run open, signals it (SignalWithStart). */
  async function start(input: StartInput): Promise<{ runId: string; started: boolean }> {
    validateStart(input);
    return withWritable(input.namespace, (ns) => startIn(ns, input), input.callSignal);
  }

  async function startIn(ns: NamespaceRecord, input: StartInput, attempt = 1): Promise<{ runId: string; started: boolean }> {
    if (ns.state === "DEPRECATED") throw failedPrecondition(`namespace ${ns.name} is deprecated: it takes no new workflows`);
    writer.checkBlob(payloadBytes(input.input, input.signal?.input), input.signal ? "SignalWithStartWorkflowExecution" : "StartWorkflowExecution", ns.name);
    const requestId = input.requestId || ulid();
    const operation = input.signal ? "SignalWithStartWorkflowExecution" : "CreateWorkflowExecution";
    const runId = ulid();
    const oneTrip = await startInOneTrip(operation, ns, input, requestId, runId);
    if (oneTrip) {
      metrics.inc("history_writes", { operation, path: "one-trip" });
      if (oneTrip.fireAt) deps.onTimerCreated(oneTrip.fireAt);
      notifier.notify(oneTrip.runId);
      return { runId: oneTrip.runId, started: oneTrip.started };
    }
    try {
      const key = runKey(ns.id, input.workflowId);
      let left: ExecutionRow | undefined;
      // The open run terminate-if-running terminated, once its transaction committed.
      let terminated: string | undefined;
      const result = await writer.transactPipelined(operation, async (tx, commit): Promise<{ runId: string; started: boolean; fireAt?: Date }> => {
        // With BEGIN: the namespace check, then the workflow's current run, locked (as appendTo).
        const [, previous] = await Promise.all([writer.guard(tx, ns), lockRun(tx, ns.id, input.workflowId, "")]);
        const open = previous?.status === "RUNNING" ? previous : undefined;
        const action = open ? onOpenRun(input.reusePolicy, Boolean(input.signal)) : "start";
        if (action === "refuse") throw new StartRefused(previous!, "is already running");
        const refusal = open ? undefined : reuseRefusal(input.reusePolicy, previous?.status);
        if (refusal) throw new StartRefused(previous!, `cannot start: ${refusal}`);
        // With COMMIT: the request id records where this request's first event went; its claim
        // fails for a retry of a request that went through before, which rolls the write back
        // (the catch below answers with the first, and a retry of a terminate-if-running start
        // terminates nothing).
        const signalled = action === "signal" ? open : undefined;
        const target = signalled ? { runId: signalled.runId, eventId: signalled.nextEventId } : { runId, eventId: 1 };
        const claim = claimRequestOrFail(tx, { namespaceId: ns.id, workflowId: input.workflowId, requestId, ...target });
        // SignalWithStart on an open run signals it; terminate-if-running terminates it, then
        // starts the new run, in this transaction (the terminate's row first: one open run per id).
        const closing = action === "terminate" ? writer.append(tx, ns, open!, terminateForNewRun(runId), { guarded: true }) : undefined;
        const written = signalled
          ? writer.append(tx, ns, signalled, { events: [signalEvent(input.signal!.name, input.signal!.input, input.identity, requestId)] }, { guarded: true })
          : insertRun(tx, ns, { ...input, requestId }, runId, previous);
        commit();
        const [, w] = await Promise.all([claim, written, closing]);
        left = w.row;
        terminated = closing && open!.runId;
        return signalled ? { runId: signalled.runId, started: false } : { runId, started: true, fireAt: (w as { fireAt?: Date }).fireAt };
      }, input.callSignal).catch(async (e) => {
        left = terminated = undefined;
        runs.forget(key);
        // A retry answers with the first attempt's result, whatever this attempt ran into
        // (the run started by it is open, or closed since and refuses reuse, a duplicate claim).
        const first = await firstResultOf(deps.db as never, operation, { namespaceId: ns.id, workflowId: input.workflowId, requestId });
        if (!first) throw e;
        return { runId: first.runId, started: false };
      });
      if (terminated) {
        notifier.notify(terminated);
        countClose("TERMINATED", ns.name);
      }
      if (left) {
        runs.put(key, left);
        metrics.inc("history_writes", { operation, path: "read-first" });
      }
      if ("fireAt" in result && result.fireAt) deps.onTimerCreated(result.fireAt);
      notifier.notify(result.runId);
      return { runId: result.runId, started: result.started };
    } catch (e) {
      // Answered once the write's transaction is over: the answer reads the run's first event.
      if (e instanceof StartRefused) throw await alreadyStarted(deps.db, e.run, e.why);
      const pg = pgErrorOf(e);
      if (pg.code === "23505" && pg.constraint?.startsWith("executions")) {
        if (onOpenRun(input.reusePolicy, Boolean(input.signal)) === "refuse") {
          // Another start won the race: named as a start that found it running would name it.
          const winner = await currentRun(deps.db, ns.id, input.workflowId);
          throw winner ? await alreadyStarted(deps.db, winner, "is already running") : alreadyExists(`workflow execution ${input.workflowId} is already running`);
        }
        // SignalWithStart, or terminate-if-running, lost the race to start the next run to
        // another start: it signals, or terminates, that run, made again from a read.
        if (attempt < 5) return startIn(ns, input, attempt + 1);
        throw unavailable(`workflow execution ${input.workflowId} kept starting new runs during the ${input.signal ? "signal-with-start" : "start"}; retry`);
      }
      throw e;
    }
  }

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

function signalEvent(name: string, input: Payloads | undefined, identity?: string, requestId?: string): NewEvent {
  return {
    attributes: {
      case: "workflowExecutionSignaledEventAttributes",
      value: { signalName: name, input, identity: identity ?? "", requestId: requestId ?? "" } as never,
    },
  };
}

function validateStart(input: StartInput): void {
  if (!input.workflowId) throw invalidArgument("workflow id is required");
  if (!input.workflowType) throw invalidArgument("workflow type is required");
  if (!input.taskQueue) throw invalidArgument("task queue is required");
  if (input.executionTimeoutMs < 0) throw invalidArgument("execution timeout must not be negative");
  if (input.signal && !input.signal.name) throw invalidArgument("signal name is required");
  if (WorkflowIdReusePolicy[input.reusePolicy] === undefined) throw invalidArgument(`unknown workflow id reuse policy ${input.reusePolicy}`);
  checkIdLengths(["workflow type", input.workflowType], ["task queue", input.taskQueue], ["identity", input.identity], ["signal name", input.signal?.name]);
  checkKeyBytes(["workflow id", input.workflowId], ["request id", input.requestId]);
}
