import { ulid } from "ulid";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import { TernError } from "../src/errors";
import { lockRunKey, runKeyText, storedEvent, type RunKey } from "../src/history/branch-store";
import type { Writer } from "../src/history/writer";
import type { Logger } from "../src/observability/log";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import { deleteRunsTimers, insertExecutions, insertRunsEventRows, insertRunsEventRowsPart, insertRunsRequestIds, insertRunsRequestIdsPart, insertTimers, lockRun, type EventColumns, type ExecutionRow, type NewExecutionRow, type TimerRow } from "../src/history/execution-store";
import { lockCurrentRuns, lockRunKeys, lockRuns, saveRuns, saveRunsPart, workflowKeyText } from "../src/history/run-batches";
import { shardFor } from "../src/history/shard";
import type { NamespaceRecord, NamespaceRegistry } from "../src/namespace/registry";
import type { Tx } from "../src/persistence/database";
import { paddedChunks, type StatementPart } from "../src/persistence/raw-statements";
import type { executions } from "../src/persistence/schema";
import { applyEvents, initialRunState, type EventRequestId, type RunState } from "./run-state";
import { RetryableReplicationError, type IncomingTask, type RawHistoryFetcher } from "./apply-errors";
import { createConflictResolver } from "./conflict";
import { firstDivergence, lastEventIdOf, lastVersionOf } from "./version-history";

export { HistoryDivergenceError, isTaskFailure, RetryableReplicationError, type IncomingTask, type RawHistoryFetcher } from "./apply-errors";

export interface HistoryApplierDeps {
  cluster: CurrentCluster;
  namespaces: NamespaceRegistry;
  /** Writes of the active cluster: re-applied signals and cancel requests after a conflict. */
  writer: Pick<Writer, "append">;
  log: Logger;
}

/**
 * Applies replicated history on the passive side (DESIGN.md section 4): creates or
 * appends to the local copy, skips duplicates, repairs gaps through raw history, and hands
 * divergent branches to conflict resolution (conflict.ts). It writes no replication task
 * of its own: a passive copy is not re-replicated (re-applied requests are new writes).
 */
export function createHistoryApplier({ cluster, namespaces, writer, log }: HistoryApplierDeps) {
  const conflicts = createConflictResolver({ cluster, writer, log, writeEvents });
  /**
   * The namespaces of tasks, looked up before the apply transaction opens (PGlite runs
   * one transaction at a time: a lookup on the pool inside it would wait for itself).
   */
  async function namespacesOf(tasks: { namespaceId: string }[]): Promise<Map<string, NamespaceRecord>> {
    const found = new Map<string, NamespaceRecord>();
    for (const { namespaceId: id } of tasks) {
      if (found.has(id)) continue;
      try {
        found.set(id, await namespaces.getById(id));
      } catch (e) {
        // Namespace replication is a separate stream and may deliver it later: retry, never drop.
        if (e instanceof TernError && e.kind === "not_found") throw new RetryableReplicationError(`namespace ${id} is not known on ${cluster.clusterName} yet; retrying`);
        throw e;
      }
    }
    return found;
  }

  /** The task's events this cluster lacks, with any gap before them filled from the source; undefined on divergence. */
  async function newEvents(task: IncomingTask, run: ExecutionRow | undefined, fetchRaw: RawHistoryFetcher): Promise<HistoryEvent[] | undefined> {
    const n = needed(task, run);
    if (n === "diverged") return undefined;
    if (!n.missing) return n.fresh;
    return [...(await fetchRaw(task, n.missing.first, n.missing.next)), ...n.fresh];
  }

  /** Applies one task inside tx; returns how many events it added (0 for a duplicate). */
  async function applyTask(tx: Tx, ns: NamespaceRecord, task: IncomingTask, fetchRaw: RawHistoryFetcher): Promise<number> {
    const key: RunKey = { namespaceId: ns.id, workflowId: task.workflowId, runId: task.runId };
    // Replication and backfill may apply the same run at once: a run that does not exist
    // yet has no row to lock, so the run's key is locked for the transaction first.
    const locked = lockRunKey(tx, key);
    const [, run] = await Promise.all([locked, lockRun(tx, key.namespaceId, key.workflowId, key.runId)]);
    const events = await newEvents(task, run, fetchRaw);
    if (!events) return conflicts.resolve(tx, ns, run!, task, fetchRaw);
    if (events.length === 0) return 0;
    if (run) await writeAll(tx, [appendWrites(run, events)]);
    else await createRun(tx, ns, key, task, events);
    return events.length;
  }

  /**
   * For an apply in two round trips (the receiver's pipelined page): issues at once, without
   * waiting, the locks and reads applying the tasks (of distinct runs) needs, as applyTask
   * takes them but in two statements for the whole page, and for the tasks that may start
   * their run, their workflows' current runs (a rival open run) in a third.
   */
  function readForApply(tx: Tx, tasks: { ns: NamespaceRecord; task: IncomingTask }[]): Promise<RunReads[]> {
    const keys: RunKey[] = tasks.map(({ ns, task }) => ({ namespaceId: ns.id, workflowId: task.workflowId, runId: task.runId }));
    const starts = keys.filter((_, i) => tasks[i]!.task.firstEventId === 1);
    const currents = starts.length ? lockCurrentRuns(tx, starts) : Promise.resolve(new Map<string, ExecutionRow>());
    return Promise.all([lockRunKeys(tx, keys), lockRuns(tx, keys), currents]).then(([, runs, current]) =>
      keys.map((k, i) => ({ run: runs.get(runKeyText(k)), current: tasks[i]!.task.firstEventId === 1 ? current.get(workflowKeyText(k)) : undefined })),
    );
  }

  /**
   * What applying task onto what readForApply found writes, planned without touching the
   * database: how many events it adds, and the rows (writeAll issues a page's together).
   * Undefined when the task needs applyTask instead: a divergence (conflict resolution),
   * a gap (a fetch from the source) or another open run of the workflow.
   */
  function planApply(ns: NamespaceRecord, task: IncomingTask, { run, current }: RunReads): PlannedApply | undefined {
    const n = needed(task, run);
    if (n === "diverged" || n.missing) return undefined;
    const events = n.fresh;
    if (events.length === 0) return { events: 0 };
    if (run) return { events: events.length, write: appendWrites(run, events) };
    if (current && current.status === "RUNNING" && current.runId !== task.runId) return undefined;
    const key: RunKey = { namespaceId: ns.id, workflowId: task.workflowId, runId: task.runId };
    const { state, requestIds: ids } = applyEvents(initialRunState(events[0]!), events);
    return { events: events.length, write: newRunWrites(key, state, events, ids) };
  }

  /**
   * Creates the local copy of a run. When another run of the workflow is open here (both
   * were started while the clusters were apart, or the other's close is still to come: in
   * the DLQ), the one that happens after the other (happensAfter) stays open and the other
   * becomes a ZOMBIE (conflict.ts).
   */
  async function createRun(tx: Tx, ns: NamespaceRecord, key: RunKey, task: IncomingTask, events: HistoryEvent[]): Promise<void> {
    const { state, requestIds: ids } = applyEvents(initialRunState(events[0]!), events);
    const rival = state.status === "RUNNING" ? await conflicts.openRival(tx, key) : undefined;
    const loses = rival !== undefined && !happensAfter({ ...key, lastWriteVersion: lastVersionOf(task.versionHistory), startTime: state.startTime }, rival);
    if (rival && !loses) await conflicts.demote(tx, rival);
    if (loses) state.status = "ZOMBIE";
    await writeAll(tx, [newRunWrites(key, state, events, ids)]);
    if (rival) await (loses ? conflicts.retire(tx, ns, key, rival) : conflicts.retire(tx, ns, rival, key));
  }

  /** Writes of a run's local copy: its row, its events and, open with a timeout, its timer (stored on the passive side too, so the new active fires it after a failover). */
  function newRunWrites(key: RunKey, state: RunState, events: HistoryEvent[], ids: EventRequestId[]) {
    const shardId = shardFor(key.namespaceId, key.workflowId, cluster.historyShardCount);
    const timer =
      state.status === "RUNNING" && state.executionTimeoutMs > 0
        ? { id: ulid(), shardId, fireAt: new Date(state.startTime.getTime() + state.executionTimeoutMs), kind: "WORKFLOW_TIMEOUT", ...key, version: Number(events[0]!.version) }
        : undefined;
    return { insert: { ...key, shardId, ...state }, ...eventRows(key, events, ids), timer };
  }

  /** Writes of events appended to an existing run: its state, the events, and its timers gone if they close it. */
  function appendWrites(run: ExecutionRow, events: HistoryEvent[]): RunWrites {
    const { state, requestIds: ids } = applyEvents(stateOf(run), events);
    const closes = run.status === "RUNNING" && state.status !== "RUNNING";
    return { save: { prev: run, next: state }, ...eventRows(run, events, ids), clearTimers: closes ? run : undefined };
  }

  return { namespacesOf, applyTask, readForApply, planApply, writeAll, writeParts, settle: conflicts.settle };
}

export type HistoryApplier = ReturnType<typeof createHistoryApplier>;

type RunOrder = Pick<ExecutionRow, "runId" | "lastWriteVersion" | "startTime">;

/**
 * Whether run `a` happens after run `b` of its workflow (Temporal's workflowHappensAfter): the
 * one last written at the higher failover version; at one version, one cluster wrote both and
 * closed the other before it started the later, which wins (the other's close may still be on
 * its way here: held in the DLQ). Temporal orders those by task id; the start times stand in.
 */
export function happensAfter(a: RunOrder, b: RunOrder): boolean {
  if (a.lastWriteVersion !== b.lastWriteVersion) return a.lastWriteVersion > b.lastWriteVersion;
  const [at, bt] = [a.startTime.getTime(), b.startTime.getTime()];
  return at !== bt ? at > bt : a.runId > b.runId;
}

/** What readForApply found of a task's run: the run, and for a task that may start it, the workflow's current run. */
export interface RunReads {
  run?: ExecutionRow;
  current?: ExecutionRow;
}

/** A task's apply as planApply planned it. */
export interface PlannedApply {
  /** Events the apply adds (0 for a duplicate). */
  events: number;
  /** Its rows, for writeAll; none for a duplicate. */
  write?: RunWrites;
}

/** What applying events to one run writes. */
export interface RunWrites {
  /** A new run's row. */
  insert?: NewExecutionRow;
  /** An existing run's state: prev as read (its db_version), next as the events leave it. */
  save?: { prev: ExecutionRow; next: RunState };
  events: (EventColumns & { key: RunKey })[];
  requestIds: { key: RunKey; requestId: string; eventId: number }[];
  timer?: TimerRow;
  /** A run the events close: its pending timers go. */
  clearTimers?: RunKey;
}

/**
 * Issues the writes of several runs' applies at once, in a few statements whatever their
 * number (run rows, states, events, request ids, timers and timers cleared: a statement
 * per 1,024 of each); settles when they have run.
 */
function writeAll(tx: Tx, writes: RunWrites[]): Promise<unknown> {
  // Pipelined, in this order: new runs' rows, saved states, events, request ids, timers, timers cleared.
  return Promise.all([
    insertExecutions(tx, writes.flatMap((w) => (w.insert ? [w.insert] : []))),
    saveRuns(tx, writes.flatMap((w) => (w.save ? [w.save] : []))),
    insertRunsEventRows(tx, writes.flatMap((w) => w.events)),
    insertRunsRequestIds(tx, writes.flatMap((w) => w.requestIds)),
    insertTimers(tx, writes.flatMap((w) => (w.timer ? [w.timer] : []))),
    deleteRunsTimers(tx, writes.flatMap((w) => (w.clearTimers ? [w.clearTimers] : []))),
  ]);
}

/**
 * writeAll as parts of one composite statement, for writes that only append to existing
 * runs (a state, events, request ids), at most 1,024 of each: undefined for any others (a
 * new run, a timer made or cleared) and for more. The runs' key locks (lockRunKeys) order
 * these writes among appliers, so the parts need no order of their own.
 */
function writeParts(writes: RunWrites[]): StatementPart[] | undefined {
  if (!writes.length || writes.some((w) => w.insert || w.timer || w.clearTimers || !w.save)) return undefined;
  const saves = writes.map((w) => w.save!);
  if (paddedChunks(saves).length > 1) return undefined;
  const events = insertRunsEventRowsPart(writes.flatMap((w) => w.events));
  const ids = writes.flatMap((w) => w.requestIds);
  const idsPart = ids.length ? insertRunsRequestIdsPart(ids) : undefined;
  if (!events || (ids.length && !idsPart)) return undefined;
  return [saveRunsPart(saves), events, ...(idsPart ? [idsPart] : [])];
}

/** The stored rows of events added to a run, and of the request ids they carry. */
function eventRows(key: RunKey, events: HistoryEvent[], ids: EventRequestId[]): Pick<RunWrites, "events" | "requestIds"> {
  const k = { namespaceId: key.namespaceId, workflowId: key.workflowId, runId: key.runId };
  return { events: events.map((e) => ({ ...storedEvent(e), key: k })), requestIds: ids.map((r) => ({ ...r, key: k })) };
}

/**
 * The task's events this cluster lacks given its copy of the run: those present in the
 * task, and the ids of any gap before them (to fetch from the source); "diverged" when the
 * run's branch and the task's part (conflict resolution).
 */
function needed(task: IncomingTask, run: ExecutionRow | undefined): "diverged" | { fresh: HistoryEvent[]; missing?: { first: number; next: number } } {
  const last = run ? run.nextEventId - 1 : 0;
  if (run && firstDivergence(run.versionHistory, task.versionHistory) !== undefined) return "diverged";
  const fresh = task.events.filter((e) => Number(e.eventId) > last);
  const from = fresh.length ? Number(fresh[0]!.eventId) : task.nextEventId;
  if (from <= last + 1 || lastEventIdOf(task.versionHistory) <= last) return { fresh };
  return { fresh, missing: { first: last + 1, next: from } };
}

function stateOf(run: ExecutionRow): RunState {
  const { workflowType, taskQueue, executionTimeoutMs, startTime, status, closeTime, cancelRequested, nextEventId, lastWriteVersion, versionHistory } = run;
  return { workflowType, taskQueue, executionTimeoutMs, startTime, status, closeTime, cancelRequested, nextEventId, lastWriteVersion, versionHistory };
}

/** Inserts the events as the source wrote them (own versions and times) and their request ids. */
async function writeEvents(tx: Tx, key: RunKey, events: HistoryEvent[], ids: EventRequestId[]): Promise<void> {
  await writeAll(tx, [eventRows(key, events, ids)]);
}
