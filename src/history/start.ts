import { ulid } from "ulid";
import { WorkflowIdReusePolicy } from "../gen/tern/common/v1/common_pb";
import { alreadyExists, connectionLost, failedPrecondition, invalidArgument, pgErrorOf, unavailable } from "../errors";
import type { NamespaceRecord } from "../namespace/registry";
import type { Tx } from "../persistence/database";
import type { StatementPart } from "../persistence/raw-statements";
import { alreadyStarted, currentRun, StartRefused } from "./already-started";
import type { EngineDeps, RunRef, StartInput } from "./engine";
import { payloadBytes, signalEvent } from "./events";
import { claimRequestOrFail, claimRequestPart, insertEvents, insertExecution, insertExecutionPart, insertTimer, insertTimerPart, lockRun, NEW_RUN, noRunPart, RunExistsError, type ExecutionRow, type NewEvent } from "./execution-store";
import { checkIdLengths, checkKeyBytes } from "./id-limits";
import { insertedRow, type createRecentRows } from "./recent-rows";
import { firstResultOf } from "./request-reuse";
import { onOpenRun, reuseRefusal, terminateForNewRun } from "./reuse-policy";
import { shardFor } from "./shard";

/** What the starter shares with the engine that makes it (engine.ts). */
export interface WorkflowStarterDeps {
  engine: EngineDeps;
  /** The engine's recent rows, keyed by runKey. */
  runs: ReturnType<typeof createRecentRows>;
  runKey: (namespaceId: string, workflowId: string) => string;
  withWritable: <T>(name: string, write: (ns: NamespaceRecord) => Promise<T>, signal?: AbortSignal) => Promise<T>;
  appendInOneTrip: (
    operation: string,
    ns: NamespaceRecord,
    ref: RunRef,
    build: () => { events: NewEvent[] },
  ) => Promise<{ runId: string } | undefined>;
  countClose: (status: string, namespace: string) => void;
}

/**
 * Creates the engine's starts: StartWorkflowExecution and SignalWithStartWorkflowExecution,
 * under the workflow id reuse policy, in one round trip where this process's recent rows allow.
 */
export function createWorkflowStarter({ engine: deps, runs, runKey, withWritable, appendInOneTrip, countClose }: WorkflowStarterDeps) {
  const { writer, notifier, metrics, cluster } = deps;

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

  return start;
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
