import { ulid } from "ulid";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import { TernError } from "../src/errors";
import { lockRunKey, storedEvent, type RunKey } from "../src/history/branch-store";
import type { Writer } from "../src/history/writer";
import type { Logger } from "../src/observability/log";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import { deleteTimers, insertEventRows, insertExecution, insertRequestIds, insertTimer, lockRun, saveRun, type ExecutionRow } from "../src/history/execution-store";
import { shardFor } from "../src/history/shard";
import type { NamespaceRecord, NamespaceRegistry } from "../src/namespace/registry";
import type { Tx } from "../src/persistence/database";
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
    if (run) await appendWrites(run, events)(tx);
    else await createRun(tx, ns, key, task, events);
    return events.length;
  }

  /**
   * For an apply in two round trips (the receiver's pipelined page): issues at once, without
   * waiting, the locks and reads applying task needs, as applyTask takes them, and for a
   * task that may start its run, the workflow's current run (a rival open run).
   */
  function readForApply(tx: Tx, ns: NamespaceRecord, task: IncomingTask): Promise<RunReads> {
    const key: RunKey = { namespaceId: ns.id, workflowId: task.workflowId, runId: task.runId };
    return Promise.all([
      lockRunKey(tx, key),
      lockRun(tx, key.namespaceId, key.workflowId, key.runId),
      task.firstEventId === 1 ? lockRun(tx, key.namespaceId, key.workflowId, "") : undefined,
    ]).then(([, run, current]) => ({ run, current }));
  }

  /**
   * What applying task onto what readForApply found writes, planned without touching the
   * database: how many events it adds, and a function that issues the writes at once.
   * Undefined when the task needs applyTask instead: a divergence (conflict resolution),
   * a gap (a fetch from the source) or another open run of the workflow.
   */
  function planApply(ns: NamespaceRecord, task: IncomingTask, { run, current }: RunReads): PlannedApply | undefined {
    const n = needed(task, run);
    if (n === "diverged" || n.missing) return undefined;
    const events = n.fresh;
    if (events.length === 0) return { events: 0, write: async () => {} };
    if (run) return { events: events.length, write: appendWrites(run, events) };
    if (current && current.status === "RUNNING" && current.runId !== task.runId) return undefined;
    const key: RunKey = { namespaceId: ns.id, workflowId: task.workflowId, runId: task.runId };
    const { state, requestIds: ids } = applyEvents(initialRunState(events[0]!), events);
    return { events: events.length, write: newRunWrites(key, state, events, ids) };
  }

  /**
   * Creates the local copy of a run. When another run of the workflow is open here (both
   * were started while the clusters were apart), the one last written at the higher
   * failover version stays open and the other becomes a ZOMBIE (conflict.ts).
   */
  async function createRun(tx: Tx, ns: NamespaceRecord, key: RunKey, task: IncomingTask, events: HistoryEvent[]): Promise<void> {
    const { state, requestIds: ids } = applyEvents(initialRunState(events[0]!), events);
    const rival = state.status === "RUNNING" ? await conflicts.openRival(tx, key) : undefined;
    const loses = rival !== undefined && lastVersionOf(task.versionHistory) <= rival.lastWriteVersion;
    if (rival && !loses) await conflicts.demote(tx, rival);
    if (loses) state.status = "ZOMBIE";
    await newRunWrites(key, state, events, ids)(tx);
    if (rival) await (loses ? conflicts.retire(tx, ns, key, rival) : conflicts.retire(tx, ns, rival, key));
  }

  /** Writes of a run's local copy: its row, its events and, open with a timeout, its timer (stored on the passive side too, so the new active fires it after a failover). */
  function newRunWrites(key: RunKey, state: RunState, events: HistoryEvent[], ids: EventRequestId[]) {
    const shardId = shardFor(key.namespaceId, key.workflowId, cluster.historyShardCount);
    const timer =
      state.status === "RUNNING" && state.executionTimeoutMs > 0
        ? { id: ulid(), shardId, fireAt: new Date(state.startTime.getTime() + state.executionTimeoutMs), kind: "WORKFLOW_TIMEOUT", ...key, version: Number(events[0]!.version) }
        : undefined;
    // Pipelined, in this order: the run's row, its events, its timer.
    return (tx: Tx) => Promise.all([insertExecution(tx, { ...key, shardId, ...state }), writeEvents(tx, key, events, ids), timer && insertTimer(tx, timer)]);
  }

  /** Writes of events appended to an existing run: its state, the events, and its timers gone if they close it. */
  function appendWrites(run: ExecutionRow, events: HistoryEvent[]) {
    const { state, requestIds: ids } = applyEvents(stateOf(run), events);
    const closes = run.status === "RUNNING" && state.status !== "RUNNING";
    return (tx: Tx) => Promise.all([saveRun(tx, run, state), writeEvents(tx, run, events, ids), closes ? deleteTimers(tx, run) : undefined]);
  }

  return { namespacesOf, applyTask, readForApply, planApply, settle: conflicts.settle };
}

export type HistoryApplier = ReturnType<typeof createHistoryApplier>;

/** What readForApply found of a task's run: the run, and for a task that may start it, the workflow's current run. */
export interface RunReads {
  run?: ExecutionRow;
  current?: ExecutionRow;
}

/** A task's apply as planApply planned it. */
export interface PlannedApply {
  /** Events the apply adds (0 for a duplicate). */
  events: number;
  /** Issues the apply's writes on tx at once; settles when they have run. */
  write: (tx: Tx) => Promise<unknown>;
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
  // Pipelined: events and request ids go out together.
  await Promise.all([insertEventRows(tx, key, events.map(storedEvent)), insertRequestIds(tx, key, ids)]);
}
