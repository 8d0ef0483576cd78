import { anyShardKey, shardKey } from "../../replication/ack-levels";
import { estimateEventBytes } from "../../replication/outbox-tail";
import { appendReplicationTask, appendReplicationTasks, replicationTaskOf, replicationTaskPart, type OutboxMarks, type ReplicationTaskInput } from "../../replication/outbox";
import type { CommittedTask, OutboxTail } from "../../replication/outbox-tail";
import type { CurrentCluster } from "../cluster/bootstrap";
import type { LimitsConfig } from "../config/schema";
import { connectionLost, failedPrecondition, invalidArgument, pgErrorOf, unavailable } from "../errors";
import type { NamespaceRecord } from "../namespace/registry";
import type { Logger } from "../observability/log";
import type { Metrics } from "../observability/metrics";
import { createQueryCanceller, transaction } from "../persistence/call-signal";
import type { Db, Tx } from "../persistence/database";
import { singleStatement, type PipelinedTransactions } from "../persistence/pipelined-tx";
import { composite, runGuard, type StatementPart } from "../persistence/raw-statements";
import type { VersionHistoryItem } from "../persistence/schema";
import { guardNamespace, stillWritablePart } from "./namespace-guard";
import { savedRow } from "./recent-rows";
import { SAVED_RUNS, saveRunsPart, StaleRunError } from "./run-batches";
import { claimRequestPart, deleteTimers, deleteTimersPart, extendVersionHistory, insertEvents, insertEventsPart, saveRun, type ExecutionRow, type NewEvent } from "./execution-store";
import type { EventNotifier } from "./notifier";

/** Shared plumbing of every history write: transactions, limits, outbox, metrics. */
export interface WriterDeps {
  db: Db;
  cluster: CurrentCluster;
  limits: LimitsConfig;
  metrics: Metrics;
  log: Logger;
  now: () => Date;
  /** PostgreSQL only: transactions in two round trips, for transactPipelined. */
  pipelined?: PipelinedTransactions;
  /** Where transactOneStatement's statement goes (PostgreSQL only; default db). */
  oneStatementDb?: Db;
  /** Test hook, called inside the transaction just before it commits. */
  beforeCommit?: (operation: string) => Promise<void> | void;
  /** Told `shard:N` after a transaction that wrote a replication task of shard N commits, and `shard:any` (anyShardKey) once. */
  notifier?: EventNotifier;
  /** Told the task ids such a transaction committed, before the notifier. */
  outboxMarks?: OutboxMarks;
  /** Given the tasks (with their events) such a transaction committed, before the notifier. */
  outboxTail?: OutboxTail;
}

/** The events and state change to append to an open run. */
export interface Append {
  events: NewEvent[];
  status?: string;
  cancelRequested?: boolean;
}

/** True when writes to ns must leave a replication task (DESIGN.md section 3). */
export const isReplicated = (ns: NamespaceRecord) => ns.isGlobal;

/** Creates the writer used by the engine and the timer queue. */
export function createWriter(deps: WriterDeps) {
  const { db, metrics, limits, log } = deps;
  // The replication tasks an open transaction wrote: kept in the outbox tail, and their shards
  // woken, once it commits.
  const txTasks = new WeakMap<Tx, CommittedTask[]>();

  /**
   * Runs fn in a transaction, retrying serialization failures, with persistence metrics. With
   * signal (a call's, call-signal.ts), it does not commit once the signal fired, nor do the
   * other transact functions.
   */
  function transact<T>(operation: string, fn: (tx: Tx) => Promise<T>, signal?: AbortSignal): Promise<T> {
    return withRetries(operation, (done) =>
      transaction(
        db,
        async (tx) => {
          const r = await fn(tx);
          await deps.beforeCommit?.(operation);
          done(tx);
          return r;
        },
        signal,
      ),
    );
  }

  /**
   * transact for callbacks that use hand-written statements only (see pipelined-tx.ts): on
   * PostgreSQL BEGIN travels with the first reads and COMMIT with the writes, once fn calls
   * commit(); on PGlite it is an ordinary transaction and commit() does nothing.
   */
  function transactPipelined<T>(operation: string, fn: (tx: Tx, commit: () => void) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const pipelined = deps.pipelined;
    if (!pipelined) return transact(operation, (tx) => fn(tx, () => {}), signal);
    const hook = deps.beforeCommit && (() => deps.beforeCommit!(operation));
    return withRetries(operation, (done) =>
      pipelined.run(async (tx, commit) => {
        const r = await fn(tx, () => {
          done(tx);
          commit();
        });
        done(tx);
        return r;
      }, hook, signal),
    );
  }

  /**
   * transact for a callback that issues exactly one statement (oneStatement): on PostgreSQL the
   * statement goes alone, without BEGIN and COMMIT, and commits by itself, so the write costs
   * PostgreSQL one Sync and one answer on the socket, where each statement of a transaction
   * costs one; a second statement is refused (singleStatement). On PGlite, and with the
   * beforeCommit test hook (a statement alone has no moment before its commit), in a
   * transaction as transactPipelined. With signal, not sent once it fired; once sent, the
   * statement is its own COMMIT, which a signal cannot take back (as a COMMIT already sent):
   * it is not cancelled, since a cancel needs the statement on a connection held for it, and
   * holding one per write cost about a fifth of the writes at saturation (bench/README.md,
   * 2026-12-06). A lock wait still ends at the lock timeout. The applier's statements
   * (oneStatementDb, connections of its own) are cancelled: see below.
   */
  function transactOneStatement<T>(operation: string, fn: (tx: Tx) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const pipelined = deps.pipelined;
    if (!pipelined || deps.beforeCommit) {
      return transactPipelined(operation, (tx, commit) => {
        const r = fn(tx);
        commit();
        return r;
      }, signal);
    }
    const written = (done: (tx: Tx) => void) => async (tx: Tx) => {
      const r = await fn(tx);
      done(tx);
      return r;
    };
    // On the applier's own connections (oneStatementDb), the stop's signal cancels the statement
    // in flight (one waiting for a lock): only the applier's statements run there, and a stop
    // ends them all, so a cancel arriving after its statement ended (when the connection runs
    // the next) fails at worst another apply, which is taken again. Requests' writes share the
    // pool with every other request: theirs are not cancelled.
    const cancels = deps.oneStatementDb !== undefined && signal !== undefined;
    return withRetries(operation, async (done) => {
      signal?.throwIfAborted();
      if (!cancels) return written(done)(singleStatement(deps.oneStatementDb ?? db));
      const canceller = createQueryCanceller(signal);
      try {
        return await written(done)(singleStatement(deps.oneStatementDb!, canceller));
      } catch (e) {
        // A statement the signal cancelled fails as PostgreSQL's 57014: say it was stopped.
        signal.throwIfAborted();
        throw e;
      } finally {
        await canceller.stop();
      }
    });
  }

  /** Runs one transaction attempt after another while they fail with a serialization failure or deadlock. */
  async function withRetries<T>(operation: string, attempt: (done: (tx: Tx) => void) => Promise<T>): Promise<T> {
    for (let n = 1; ; n++) {
      const started = performance.now();
      metrics.inc("persistence_requests", { operation });
      try {
        let written: CommittedTask[] | undefined;
        // Called with the transaction once its writes are issued: the tasks to announce after commit.
        const result = await attempt((tx) => void (written ??= txTasks.get(tx)));
        if (written) {
          deps.outboxTail?.committed(written);
          for (const t of written) deps.outboxMarks?.advance(t.shardId, t.taskId);
          for (const shardId of new Set(written.map((t) => t.shardId))) deps.notifier?.notify(shardKey(shardId));
          if (written.length) deps.notifier?.notify(anyShardKey);
        }
        return result;
      } catch (e) {
        const { code, constraint } = pgErrorOf(e);
        if ((code === "40001" || code === "40P01") && n < 5) continue;
        // A retried request's claim failing is an answer (the first write's), not a failure.
        const retried = code === "23505" && constraint?.startsWith("request_ids");
        // The database's own errors and a lost or refused connection (no SQLSTATE): an outage is
        // the failure persistence_errors is watched for.
        if ((code || connectionLost(e)) && !retried) metrics.inc("persistence_errors", { operation });
        throw e;
      } finally {
        // Every attempt, failed ones too: a write that waited out the lock timeout took 10 s.
        metrics.observe("persistence_latency", { operation }, (performance.now() - started) / 1000);
      }
    }
  }

  /** Rejects payloads over the blob size limit; logs those over the warning size. */
  function checkBlob(bytes: number, what: string, ns: string): void {
    if (bytes > limits.blobSizeLimitError) {
      throw invalidArgument(`${what} payload of ${bytes} bytes exceeds the limit of ${limits.blobSizeLimitError} bytes`);
    }
    if (bytes > limits.blobSizeLimitWarn) log.warn("large payload", { namespace: ns, operation: what, bytes });
  }

  /**
   * Rejects a write that would grow the run's history past the event count limit. A write that
   * closes the run is taken past it: its one event is how a run at the limit ends (a terminate,
   * its execution timeout, which would otherwise fail at every scan of the timer queue), and a
   * closed run takes no more.
   */
  function checkHistorySize(run: ExecutionRow, adding: number, closing = false): void {
    const after = run.nextEventId - 1 + adding;
    if (after > limits.historyCountLimitError && !closing) {
      throw failedPrecondition(
        `workflow ${run.workflowId} run ${run.runId} would have ${after} events, over the history limit of ${limits.historyCountLimitError}`,
      );
    }
    if (after > limits.historyCountLimitWarn && run.nextEventId - 1 <= limits.historyCountLimitWarn) {
      log.warn("history size over warning limit", { workflowId: run.workflowId, runId: run.runId, events: after });
    }
  }

  /**
   * What appending change to run at ns's failover version writes, planned without a statement:
   * the first new event's id, the events' time, the version history and the run's state after
   * them. Throws for a run that holds a newer cluster's events, or that the events would take
   * past the history limit.
   */
  function appended(ns: NamespaceRecord, run: ExecutionRow, change: Append) {
    const closing = change.status !== undefined && change.status !== "RUNNING";
    checkHistorySize(run, change.events.length, closing);
    if (run.lastWriteVersion > ns.failoverVersion) {
      // The run holds a newer cluster's events (a forced failover this cluster has not
      // heard of yet): writing at a lower version would order this write before them.
      throw unavailable(
        `workflow ${run.workflowId} run ${run.runId} has events at failover version ${run.lastWriteVersion}, ` +
          `above namespace ${ns.name}'s ${ns.failoverVersion} here: the namespace failed over elsewhere; retry`,
      );
    }
    // Not before the run's start, whatever the clock says (stepped back, or another server's
    // behind): its events' times, and a close's, which a passive cluster takes from the event.
    const now = deps.now();
    const time = now < run.startTime ? run.startTime : now;
    const first = run.nextEventId;
    const next = first + change.events.length;
    const history = extendVersionHistory(run.versionHistory, next - 1, ns.failoverVersion);
    const state: Partial<ExecutionRow> = {
      nextEventId: next,
      lastWriteVersion: ns.failoverVersion,
      versionHistory: history,
      ...(change.status ? { status: change.status } : {}),
      ...(closing ? { closeTime: time } : {}),
      ...(change.cancelRequested ? { cancelRequested: true } : {}),
    };
    return { closing, time, first, history, state };
  }

  /**
   * Appends events to a locked open run, saves its state and writes the outbox task; guarded:
   * the caller ran guard in tx. Resolves to the first new event's id and the run's row as the
   * write leaves it.
   *
   * fromMemory: run is a row kept in memory, not read under its lock (a write in one round
   * trip). The write then goes as one statement behind the namespace's barrier lock
   * (composite): the namespace check (guarded is ignored), the request id's claim when
   * fromMemory names one, the state's save with its db_version compared in SQL, the events
   * and the task. Any of them failing fails the transaction: a row that moved on, a namespace
   * no longer writable here, a request id already held.
   */
  function append(
    tx: Tx,
    ns: NamespaceRecord,
    run: ExecutionRow,
    change: Append,
    opts: { guarded?: boolean; fromMemory?: boolean | { requestId?: string } } = {},
  ): Promise<{ firstEventId: number; row: ExecutionRow }> {
    // Not async: a refusal throws before any statement is issued (pipelined-tx.ts).
    const { closing, time, first, history, state } = appended(ns, run, change);
    const key = { namespaceId: run.namespaceId, workflowId: run.workflowId, runId: run.runId };
    const done = () => ({ firstEventId: first, row: savedRow(run, state) });
    if (opts.fromMemory) {
      const requestId = typeof opts.fromMemory === "object" ? opts.fromMemory.requestId : undefined;
      // The state first (the run's row lock, then the shard's, as a write from a read takes
      // them): the events and the task wait for its row, and are not written without it.
      return oneStatement(tx, ns, {
        checks: requestId ? [claimRequestPart({ ...key, requestId, eventId: first })] : [],
        row: saveRunsPart([{ prev: run, next: state }]),
        after: SAVED_RUNS,
        key: { ...key, shardId: run.shardId }, first, events: change.events, time, history,
        extra: closing ? [deleteTimersPart(key, SAVED_RUNS)] : [],
        failure: () => new StaleRunError(`workflow ${run.workflowId} run ${run.runId} changed since it was kept, or namespace ${ns.name} is no longer writable here`),
      }).then(done);
    }
    const task = taskOf(ns, { ...key, shardId: run.shardId }, first, change.events, history);
    // Pipelined: run state, events, the namespace check and the outbox task go out together
    // (one round trip); a failure of any rolls back all.
    return Promise.all([
      saveRun(tx, run, state),
      insertEvents(tx, key, first, ns.failoverVersion, time, change.events, run.versionHistory),
      opts.guarded ? undefined : guardNamespace(tx, ns, deps.cluster.clusterName),
      closing ? deleteTimers(tx, key) : undefined,
      task && appendReplicationTask(tx, task).then((written) => recordTask(tx, ns, task, time, change.events, written)),
    ]).then(done);
  }

  /**
   * A write of a run as one statement: the namespace's barrier lock and check (first, see
   * stillWritablePart), checks, the run's row (row: its insert or its state's save, whose
   * expression is named after), then its events, extra and replication task, which wait for a
   * row from after. A check that fails rejects with failure(). Not async: the parameters are
   * prepared and the statement issued before it returns (pipelined-tx.ts); alone, it is a
   * transaction of its own (transactOneStatement).
   */
  function oneStatement(
    tx: Tx,
    ns: NamespaceRecord,
    w: {
      checks: StatementPart[];
      row: StatementPart;
      after: string;
      key: { namespaceId: string; workflowId: string; runId: string; shardId: number };
      first: number;
      events: NewEvent[];
      time: Date;
      history: VersionHistoryItem[];
      extra?: StatementPart[];
      failure: () => Error;
    },
  ): Promise<unknown> {
    const task = taskOf(ns, w.key, w.first, w.events, w.history);
    const { text, params } = composite([
      stillWritablePart(ns, deps.cluster.clusterName),
      ...w.checks,
      w.row,
      insertEventsPart(w.key, w.first, ns.failoverVersion, w.time, w.events, w.after),
      ...(w.extra ?? []),
      ...(task ? [replicationTaskPart(task, w.after)] : []),
    ]);
    return runGuard(tx, text, params, w.failure).then(([row]) => task && recordTask(tx, ns, task, w.time, w.events, replicationTaskOf(task, row)));
  }

  /** Writes the replication task for events written at time from first on, when ns replicates. */
  function outbox(
    tx: Tx,
    ns: NamespaceRecord,
    key: { namespaceId: string; workflowId: string; runId: string; shardId: number },
    first: number,
    events: NewEvent[],
    time: Date,
    history: VersionHistoryItem[],
  ): Promise<unknown> {
    const task = taskOf(ns, key, first, events, history);
    if (!task) return Promise.resolve();
    return appendReplicationTask(tx, task).then((written) => recordTask(tx, ns, task, time, events, written));
  }

  /** outbox for writes of several runs, in a statement per shard (appendReplicationTasks). */
  function outboxEach(
    tx: Tx,
    ns: NamespaceRecord,
    writes: { key: { namespaceId: string; workflowId: string; runId: string; shardId: number }; first: number; events: NewEvent[]; time: Date; history: VersionHistoryItem[] }[],
  ): Promise<unknown> {
    if (!isReplicated(ns) || !writes.length) return Promise.resolve();
    const tasks = writes.map((w) => taskOf(ns, w.key, w.first, w.events, w.history)!);
    return appendReplicationTasks(tx, tasks).then((written) => written.forEach((w, i) => recordTask(tx, ns, tasks[i]!, writes[i]!.time, writes[i]!.events, w)));
  }

  /** The replication task of events from first on, undefined when ns does not replicate. */
  function taskOf(
    ns: NamespaceRecord,
    key: { namespaceId: string; workflowId: string; runId: string; shardId: number },
    first: number,
    events: NewEvent[],
    history: VersionHistoryItem[],
  ): ReplicationTaskInput | undefined {
    if (!isReplicated(ns)) return undefined;
    return { ...key, firstEventId: first, nextEventId: first + events.length, version: ns.failoverVersion, versionHistory: history, eventBytes: estimateEventBytes(events) };
  }

  /** Keeps a task tx wrote, for the outbox's marks, tail and notifier once tx commits. */
  function recordTask(tx: Tx, ns: NamespaceRecord, task: ReplicationTaskInput, time: Date, events: NewEvent[], w: { taskId: number; createdAt: Date }): void {
    const written = txTasks.get(tx) ?? [];
    txTasks.set(tx, written);
    written.push({ ...task, taskId: w.taskId, createdAt: w.createdAt, clusters: ns.clusters, eventTime: time, events });
  }

  /** Checks, inside tx, that ns may still take this write here (see namespace-guard.ts). */
  const guard = (tx: Tx, ns: NamespaceRecord) => guardNamespace(tx, ns, deps.cluster.clusterName);

  return { transact, transactPipelined, transactOneStatement, checkBlob, appended, append, oneStatement, outbox, outboxEach, checkHistorySize, guard };
}

export type Writer = ReturnType<typeof createWriter>;
