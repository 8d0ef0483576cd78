import { and, eq, gt } from "drizzle-orm";
import { ulid } from "ulid";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import { TernError } from "../src/errors";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import { insertBranchEvents, loadBranches, nextBranchId, readEventsOf, type RunKey } from "../src/history/branch-store";
import { deleteTimers, findRequest, lockRun, readRunEvents, saveRun, type ExecutionRow, type NewEvent } from "../src/history/execution-store";
import { NamespaceChanged } from "../src/history/namespace-guard";
import type { Writer } from "../src/history/writer";
import type { NamespaceRecord } from "../src/namespace/registry";
import type { Logger } from "../src/observability/log";
import type { Tx } from "../src/persistence/database";
import { historyBranchEvents, historyBranches, historyEvents, requestIds, timerTasks, type VersionHistoryItem } from "../src/persistence/schema";
import { HistoryDivergenceError, RetryableReplicationError, type IncomingTask, type RawHistoryFetcher } from "./apply-errors";
import { applyEvents, initialRunState, requestIdOf } from "./run-state";
import { firstDivergence, lastEventIdOf } from "./version-history";

export interface ConflictResolverDeps {
  cluster: CurrentCluster;
  /** Appends re-applied signals and cancel requests like any write of the active cluster. */
  writer: Pick<Writer, "append">;
  log: Logger;
  /** Writes the events of a branch that became current (the applier's insert, with request ids). */
  writeEvents: (tx: Tx, key: RunKey, events: HistoryEvent[], ids: { requestId: string; eventId: number }[]) => Promise<void>;
}

const lastVersionOf = (history: VersionHistoryItem[]) => history.at(-1)?.version ?? 0;

/** Events that carry an outside request and must survive a lost branch (DESIGN.md section 4). */
const REAPPLIED = new Set(["workflowExecutionSignaledEventAttributes", "workflowExecutionCancelRequestedEventAttributes"]);

/**
 * Conflict resolution (DESIGN.md section 4): an incoming branch that disagrees with the
 * local one forks at their last common event. The branch whose last failover version is
 * higher is current, on every cluster, whatever the arrival order; the other is kept as a
 * non-current branch. The cluster active for the namespace re-applies the signals and
 * cancel requests found only on a losing branch to the current one, exactly once: each
 * keeps its request id (or gets one from its run id, event id and version), and a request
 * id already on the current branch is not applied again. Re-applied events replicate as
 * ordinary writes, so the other clusters get them too.
 */
export function createConflictResolver({ cluster, writer, log, writeEvents }: ConflictResolverDeps) {
  /**
   * The incoming branch's events after `lca`: the ones this cluster holds (on any branch),
   * then the rest from the source, then the task's own.
   */
  async function incomingBranch(tx: Tx, run: ExecutionRow, task: IncomingTask, lca: number, fetchRaw: RawHistoryFetcher): Promise<HistoryEvent[]> {
    const own = task.events.filter((e) => Number(e.eventId) > lca);
    const from = own.length ? Number(own[0]!.eventId) : task.nextEventId;
    const held = from > lca + 1 ? await readEventsOf(tx, run, task.versionHistory, lca + 1, from) : [];
    const gapFrom = lca + 1 + held.length;
    const fetched = gapFrom < from ? await fetchRaw(task, gapFrom, from) : [];
    return [...held, ...fetched, ...own];
  }

  /** Applies a task whose history diverges from the run's current branch; returns the events added to it. */
  async function resolve(tx: Tx, ns: NamespaceRecord, run: ExecutionRow, task: IncomingTask, fetchRaw: RawHistoryFetcher): Promise<number> {
    const local = run.versionHistory;
    const incoming = task.versionHistory;
    const lca = firstDivergence(local, incoming)! - 1;
    const branches = await loadBranches(tx, run);
    // A losing branch this cluster already holds that the task repeats or continues.
    const known = branches.find((b) => firstDivergence(b.versionHistory, incoming) === undefined);
    const heldTo = known ? lastEventIdOf(known.versionHistory) : lca;
    if (lastEventIdOf(incoming) <= heldTo) return 0;
    if (lastVersionOf(incoming) === lastVersionOf(local)) {
      // One version is one cluster's: two branches ending at it cannot both be genuine.
      throw new HistoryDivergenceError(
        `history of ${task.workflowId} run ${task.runId} diverges at event ${lca + 1} with the same last version ${lastVersionOf(local)}: ` +
          `local ${JSON.stringify(local)}, incoming ${JSON.stringify(incoming)}`,
      );
    }
    const branch = await incomingBranch(tx, run, task, lca, fetchRaw);
    if (lastVersionOf(incoming) < lastVersionOf(local)) {
      // The local branch stays current; the incoming one is kept, and its requests re-applied.
      const fresh = branch.filter((e) => Number(e.eventId) > heldTo);
      if (known) {
        await Promise.all([
          insertBranchEvents(tx, run, known.branchId, fresh),
          tx.update(historyBranches).set({ versionHistory: incoming }).where(branchKey(run, known.branchId)),
        ]);
      } else {
        await keepBranch(tx, run, lca, incoming, fresh);
      }
      log.warn("replicated branch lost a conflict and is kept as a non-current branch", {
        workflowId: run.workflowId, runId: run.runId, forkEventId: lca, local, incoming,
      });
      await reapply(tx, ns, run, fresh);
      return 0;
    }
    // The incoming branch wins: the local events after the fork become a non-current branch.
    const losing = await readRunEvents(tx, run, lca + 1);
    if (known) await dropBranch(tx, run, known.branchId);
    await keepBranch(tx, run, lca, local, losing);
    await switchTo(tx, run, lca, branch);
    log.warn("replicated branch won a conflict and is now current", {
      workflowId: run.workflowId, runId: run.runId, forkEventId: lca, local, incoming,
    });
    await reapply(tx, ns, run, losing);
    return branch.length;
  }

  /** Stores events after lca of a non-current branch. */
  async function keepBranch(tx: Tx, key: RunKey, lca: number, history: VersionHistoryItem[], events: HistoryEvent[]): Promise<void> {
    const branchId = await nextBranchId(tx, key);
    await Promise.all([
      tx.insert(historyBranches).values({ ...key, branchId, forkEventId: lca, versionHistory: history }),
      insertBranchEvents(tx, key, branchId, events),
    ]);
  }

  async function dropBranch(tx: Tx, key: RunKey, branchId: number): Promise<void> {
    await Promise.all([
      tx.delete(historyBranchEvents).where(and(runOf(historyBranchEvents, key), eq(historyBranchEvents.branchId, branchId))),
      tx.delete(historyBranches).where(branchKey(key, branchId)),
    ]);
  }

  /** Replaces the run's events after lca with branch and recomputes its state and timer. */
  async function switchTo(tx: Tx, run: ExecutionRow, lca: number, branch: HistoryEvent[]): Promise<void> {
    await Promise.all([
      tx.delete(historyEvents).where(and(runOf(historyEvents, run), gt(historyEvents.eventId, lca))),
      // Request ids of the losing events no longer name an event of the current branch.
      tx.delete(requestIds).where(and(eq(requestIds.namespaceId, run.namespaceId), eq(requestIds.workflowId, run.workflowId), eq(requestIds.runId, run.runId), gt(requestIds.eventId, lca))),
      deleteTimers(tx, run),
    ]);
    const prefix = lca > 0 ? await readRunEvents(tx, run, 1, { before: lca + 1 }) : [];
    const all = [...prefix, ...branch];
    const { state } = applyEvents(initialRunState(all[0]!), all);
    const ids = branch.flatMap((e) => (requestIdOf(e) ? [{ requestId: requestIdOf(e), eventId: Number(e.eventId) }] : []));
    await Promise.all([
      saveRun(tx, run, state),
      writeEvents(tx, run, branch, ids),
    ]);
    if (state.status === "RUNNING" && state.executionTimeoutMs > 0) {
      const fireAt = new Date(state.startTime.getTime() + state.executionTimeoutMs);
      await tx.insert(timerTasks).values({
        id: ulid(), shardId: run.shardId, fireAt, kind: "WORKFLOW_TIMEOUT",
        namespaceId: run.namespaceId, workflowId: run.workflowId, runId: run.runId, version: Number(all[0]!.version),
      });
    }
  }

  /**
   * On the namespace's active cluster, appends the signals and cancel requests of lost
   * events that the current branch lacks (by request id). Elsewhere nothing: the active
   * cluster does it when the lost branch reaches it.
   */
  async function reapply(tx: Tx, ns: NamespaceRecord, key: RunKey, lost: HistoryEvent[]): Promise<void> {
    const candidates = lost.filter((e) => e.attributes.case && REAPPLIED.has(e.attributes.case));
    if (!candidates.length || !ns.isGlobal || ns.activeClusterName !== cluster.clusterName) return;
    const run = await lockRun(tx, key.namespaceId, key.workflowId, key.runId);
    if (!run || run.status !== "RUNNING") {
      // A closed run takes no more events: the lost requests stay readable on their branch.
      log.warn("lost signals and cancel requests not re-applied: the run is closed on the current branch", {
        workflowId: key.workflowId, runId: key.runId, events: candidates.map((e) => Number(e.eventId)),
      });
      return;
    }
    const events: NewEvent[] = [];
    const ids: { requestId: string; eventId: number }[] = [];
    let cancel = false;
    for (const e of candidates) {
      const requestId = requestIdOf(e) || `reapply:${key.runId}:${e.eventId}:${e.version}`;
      if (ids.some((r) => r.requestId === requestId) || (await findRequest(tx, key.namespaceId, key.workflowId, requestId))) continue;
      const isCancel = e.attributes.case === "workflowExecutionCancelRequestedEventAttributes";
      if (isCancel && (run.cancelRequested || cancel)) continue;
      cancel ||= isCancel;
      ids.push({ requestId, eventId: run.nextEventId + events.length });
      events.push({ attributes: { case: e.attributes.case, value: { ...e.attributes.value, requestId } } as NewEvent["attributes"] });
    }
    if (!events.length) return;
    try {
      await writer.append(tx, ns, run, { events, ...(cancel ? { cancelRequested: true } : {}) });
    } catch (e) {
      // Not this cluster's to write after all (it failed over meanwhile): retried until the namespace settles.
      if (e instanceof NamespaceChanged || (e instanceof TernError && e.kind === "unavailable")) throw new RetryableReplicationError(e.message);
      throw e;
    }
    await tx.insert(requestIds).values(ids.map((r) => ({ ...key, ...r }))).onConflictDoNothing();
    log.info("re-applied lost signals and cancel requests", { workflowId: key.workflowId, runId: key.runId, events: ids });
  }

  return { resolve };
}

export type ConflictResolver = ReturnType<typeof createConflictResolver>;

function runOf(t: typeof historyBranches | typeof historyBranchEvents | typeof historyEvents, k: RunKey) {
  return and(eq(t.namespaceId, k.namespaceId), eq(t.workflowId, k.workflowId), eq(t.runId, k.runId));
}

const branchKey = (k: RunKey, branchId: number) => and(runOf(historyBranches, k), eq(historyBranches.branchId, branchId));
