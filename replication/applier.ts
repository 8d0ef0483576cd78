import { ulid } from "ulid";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import { TernError } from "../src/errors";
import { lockRunKey, storedEvent, type RunKey } from "../src/history/branch-store";
import type { Writer } from "../src/history/writer";
import type { Logger } from "../src/observability/log";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import { deleteTimers, insertEventRows, insertRequestIds, lockRun, saveRun, type ExecutionRow } from "../src/history/execution-store";
import { shardFor } from "../src/history/shard";
import type { NamespaceRecord, NamespaceRegistry } from "../src/namespace/registry";
import type { Tx } from "../src/persistence/database";
import { executions, timerTasks } from "../src/persistence/schema";
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
    const last = run ? run.nextEventId - 1 : 0;
    if (run && firstDivergence(run.versionHistory, task.versionHistory) !== undefined) return undefined;
    const fresh = task.events.filter((e) => Number(e.eventId) > last);
    const from = fresh.length ? Number(fresh[0]!.eventId) : task.nextEventId;
    if (from <= last + 1) return fresh;
    if (lastEventIdOf(task.versionHistory) <= last) return fresh;
    const missing = await fetchRaw(task, last + 1, from);
    return [...missing, ...fresh];
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
    if (run) await appendToRun(tx, run, events);
    else await createRun(tx, ns, key, task, events);
    return events.length;
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
    const shardId = shardFor(key.namespaceId, key.workflowId, cluster.historyShardCount);
    await tx.insert(executions).values({ ...key, shardId, ...state });
    await writeEvents(tx, key, events, ids);
    if (rival) await (loses ? conflicts.retire(tx, ns, key, rival) : conflicts.retire(tx, ns, rival, key));
    // The timer is stored on the passive side too, so the new active fires it after a failover.
    if (state.status === "RUNNING" && state.executionTimeoutMs > 0) {
      const fireAt = new Date(state.startTime.getTime() + state.executionTimeoutMs);
      await tx.insert(timerTasks).values({ id: ulid(), shardId, fireAt, kind: "WORKFLOW_TIMEOUT", ...key, version: Number(events[0]!.version) });
    }
  }

  async function appendToRun(tx: Tx, run: ExecutionRow, events: HistoryEvent[]): Promise<void> {
    const { state, requestIds: ids } = applyEvents(stateOf(run), events);
    await Promise.all([saveRun(tx, run, state), writeEvents(tx, run, events, ids)]);
    if (run.status === "RUNNING" && state.status !== "RUNNING") await deleteTimers(tx, run);
  }

  return { namespacesOf, applyTask, settle: conflicts.settle };
}

export type HistoryApplier = ReturnType<typeof createHistoryApplier>;

function stateOf(run: ExecutionRow): RunState {
  const { workflowType, taskQueue, executionTimeoutMs, startTime, status, closeTime, cancelRequested, nextEventId, lastWriteVersion, versionHistory } = run;
  return { workflowType, taskQueue, executionTimeoutMs, startTime, status, closeTime, cancelRequested, nextEventId, lastWriteVersion, versionHistory };
}

/** Inserts the events as the source wrote them (own versions and times) and their request ids. */
async function writeEvents(tx: Tx, key: RunKey, events: HistoryEvent[], ids: EventRequestId[]): Promise<void> {
  // Pipelined: events and request ids go out together.
  await Promise.all([insertEventRows(tx, key, events.map(storedEvent)), insertRequestIds(tx, key, ids)]);
}
