import { and, eq, gt, inArray, sql } from "drizzle-orm";
import { ulid } from "ulid";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import { TernError } from "../src/errors";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import { insertBranchEvents, loadBranches, lockRunKey, nextBranchId, readBranchEvents, readEventsOf, runOf, type RunKey } from "../src/history/branch-store";
import { deleteTimers, lockRun, readRunEvents, saveRun, type ExecutionRow, type NewEvent } from "../src/history/execution-store";
import { NamespaceChanged, readNamespaceUnderBarrier } from "../src/history/namespace-guard";
import { eventFromRow } from "../src/history/events";
import type { Writer } from "../src/history/writer";
import type { NamespaceRecord } from "../src/namespace/registry";
import type { Logger } from "../src/observability/log";
import type { Tx } from "../src/persistence/database";
import { chunksOf, ROWS_PER_INSERT } from "../src/persistence/raw-statements";
import { historyBranchEvents, historyBranches, historyEvents, requestIds, timerTasks, type VersionHistoryItem } from "../src/persistence/schema";
import { HistoryDivergenceError, RetryableReplicationError, type IncomingTask, type RawHistoryFetcher } from "./apply-errors";
import { applyEvents, initialRunState, requestIdOf } from "./run-state";
import { firstDivergence, lastEventIdOf, lastVersionOf } from "./version-history";

export interface ConflictResolverDeps {
  cluster: CurrentCluster;
  /** Appends re-applied signals and cancel requests like any write of the active cluster. */
  writer: Pick<Writer, "append">;
  log: Logger;
  /** Writes the events of a branch that became current (the applier's insert, with request ids). */
  writeEvents: (tx: Tx, key: RunKey, events: HistoryEvent[], ids: { requestId: string; eventId: number }[]) => Promise<void>;
}

/** The reason a run that lost to another open run of its workflow is terminated with. */
export const VERSION_CONFLICT = "version conflict";

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
   * The incoming branch's events after `after`: the ones this cluster holds (on any branch),
   * then the rest from the source, then the task's own.
   */
  async function incomingBranch(tx: Tx, run: ExecutionRow, task: IncomingTask, after: number, fetchRaw: RawHistoryFetcher): Promise<HistoryEvent[]> {
    const own = task.events.filter((e) => Number(e.eventId) > after);
    const from = own.length ? Number(own[0]!.eventId) : task.nextEventId;
    const held = from > after + 1 ? await readEventsOf(tx, run, task.versionHistory, after + 1, from) : [];
    const gapFrom = after + 1 + held.length;
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
    if (lastVersionOf(incoming) < lastVersionOf(local)) {
      // The local branch stays current; the incoming one is kept, and its requests re-applied.
      // Only the events after what is kept already are read: a branch that comes a page at a
      // time is not read back from its fork at every page (its kept events were re-applied
      // when they came, in the transaction that kept them, or are left to settle).
      const fresh = await incomingBranch(tx, run, task, heldTo, fetchRaw);
      const reapplied = await reapply(tx, ns, run, fresh);
      // Settled through the branch's end when these and all kept before them are on the current branch.
      const settled = known ? known.reappliedThrough : lca;
      const reappliedThrough = reapplied && settled >= heldTo ? lastEventIdOf(incoming) : settled;
      if (known) {
        await Promise.all([
          insertBranchEvents(tx, run, known.branchId, fresh),
          tx.update(historyBranches).set({ versionHistory: incoming, reappliedThrough }).where(branchKey(run, known.branchId)),
        ]);
      } else {
        await keepBranch(tx, run, lca, incoming, fresh, reappliedThrough);
      }
      log.warn("replicated branch lost a conflict and is kept as a non-current branch", {
        workflowId: run.workflowId, runId: run.runId, forkEventId: lca, local, incoming,
      });
      return 0;
    }
    // The incoming branch wins: the local events after the fork become a non-current branch.
    const branch = await incomingBranch(tx, run, task, lca, fetchRaw);
    const losing = await readRunEvents(tx, run, lca + 1);
    if (known) await dropBranch(tx, run, known.branchId);
    const kept = await keepBranch(tx, run, lca, local, losing, lca);
    const rival = await switchTo(tx, run, lca, branch);
    if (rival) await (rival.loses ? retire(tx, ns, run, rival.run) : retire(tx, ns, rival.run, run));
    log.warn("replicated branch won a conflict and is now current", {
      workflowId: run.workflowId, runId: run.runId, forkEventId: lca, local, incoming,
    });
    if (await reapply(tx, ns, run, losing)) await markReapplied(tx, run, kept, lastEventIdOf(local));
    return branch.length;
  }

  /** Stores events after lca of a non-current branch, whose requests are on the current branch up to reappliedThrough; returns its branch id. */
  async function keepBranch(tx: Tx, key: RunKey, lca: number, history: VersionHistoryItem[], events: HistoryEvent[], reappliedThrough: number): Promise<number> {
    const branchId = await nextBranchId(tx, key);
    await Promise.all([
      tx.insert(historyBranches).values({ ...key, branchId, forkEventId: lca, versionHistory: history, reappliedThrough }),
      insertBranchEvents(tx, key, branchId, events),
    ]);
    return branchId;
  }

  /** Records that a kept branch's requests up to `through` are on the run's current branch: settle reads only past it. */
  async function markReapplied(tx: Tx, key: RunKey, branchId: number, through: number): Promise<void> {
    await tx.update(historyBranches).set({ reappliedThrough: through }).where(branchKey(key, branchId));
  }

  async function dropBranch(tx: Tx, key: RunKey, branchId: number): Promise<void> {
    await Promise.all([
      tx.delete(historyBranchEvents).where(and(runOf(historyBranchEvents, key), eq(historyBranchEvents.branchId, branchId))),
      tx.delete(historyBranches).where(branchKey(key, branchId)),
    ]);
  }

  /**
   * Replaces the run's events after lca with branch and recomputes its state and timer.
   * A run the switch reopens may meet another open run of its workflow (started here
   * meanwhile): returned, with which of the two lost, for the caller to retire.
   */
  async function switchTo(tx: Tx, run: ExecutionRow, lca: number, branch: HistoryEvent[]): Promise<{ run: ExecutionRow; loses: boolean } | undefined> {
    await Promise.all([
      tx.delete(historyEvents).where(and(runOf(historyEvents, run), gt(historyEvents.eventId, lca))),
      // Request ids of the losing events no longer name an event of the current branch.
      tx.delete(requestIds).where(and(eq(requestIds.namespaceId, run.namespaceId), eq(requestIds.workflowId, run.workflowId), eq(requestIds.runId, run.runId), gt(requestIds.eventId, lca))),
      deleteTimers(tx, run),
    ]);
    const prefix = lca > 0 ? await readRunEvents(tx, run, 1, { before: lca + 1 }) : [];
    const all = [...prefix, ...branch];
    const { state } = applyEvents(initialRunState(all[0]!), all);
    const rival = state.status === "RUNNING" && run.status !== "RUNNING" ? await openRival(tx, run) : undefined;
    const loses = rival !== undefined && state.lastWriteVersion <= rival.lastWriteVersion;
    if (rival && !loses) await demote(tx, rival);
    if (loses) state.status = "ZOMBIE";
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
    return rival && { run: rival, loses };
  }

  /** True when this cluster may write ns's histories at versions up to `version` (it is active, and not behind). */
  const activeFor = (ns: NamespaceRecord, version: number) =>
    ns.isGlobal && ns.activeClusterName === cluster.clusterName && ns.failoverVersion >= version;

  /** Another open run of key's workflow on this cluster, locked. */
  async function openRival(tx: Tx, key: RunKey): Promise<ExecutionRow | undefined> {
    const run = await lockRun(tx, key.namespaceId, key.workflowId, "");
    return run && run.status === "RUNNING" && run.runId !== key.runId ? run : undefined;
  }

  /** Turns a local open run that lost to another run of its workflow into a ZOMBIE. */
  async function demote(tx: Tx, run: ExecutionRow): Promise<void> {
    await Promise.all([saveRun(tx, run, { status: "ZOMBIE" }), deleteTimers(tx, run)]);
    log.warn("run lost a conflict with another open run of its workflow", { workflowId: run.workflowId, runId: run.runId });
  }

  /**
   * On the active cluster, ends a ZOMBIE run: terminated with reason "version conflict",
   * its signals and cancel requests re-applied to the run that won. Elsewhere nothing: the
   * terminate event replicates from the active cluster.
   */
  async function retire(tx: Tx, cached: NamespaceRecord, zombieKey: RunKey, winnerKey: RunKey): Promise<void> {
    const zombie = await lockRun(tx, zombieKey.namespaceId, zombieKey.workflowId, zombieKey.runId);
    const winner = await lockRun(tx, winnerKey.namespaceId, winnerKey.workflowId, winnerKey.runId);
    if (!zombie || zombie.status !== "ZOMBIE" || !cached.isGlobal) return;
    const ns = await readNamespaceUnderBarrier(tx, cached);
    if (!ns || !activeFor(ns, Math.max(zombie.lastWriteVersion, winner?.lastWriteVersion ?? 0))) return;
    const reason = `${VERSION_CONFLICT}: run ${winnerKey.runId} of this workflow was written at a higher failover version`;
    await writeAsActive(tx, ns, zombie, {
      events: [{ attributes: { case: "workflowExecutionTerminatedEventAttributes", value: { reason, identity: `tern/${cluster.clusterName}` } } as NewEvent["attributes"] }],
      status: "TERMINATED",
    });
    log.warn("terminated a run that lost a conflict with another open run", { workflowId: zombie.workflowId, runId: zombie.runId, winner: winnerKey.runId });
    await reapply(tx, ns, winnerKey, await readRunEvents(tx, zombie, 1), zombie.runId);
  }

  /** Whether run was closed because another run of its workflow won a conflict. */
  async function retiredByConflict(tx: Tx, run: ExecutionRow): Promise<boolean> {
    if (run.status === "ZOMBIE") return true;
    if (run.status !== "TERMINATED") return false;
    const [last] = await readRunEvents(tx, run, run.nextEventId - 1);
    const a = last?.attributes;
    return a?.case === "workflowExecutionTerminatedEventAttributes" && a.value.reason.startsWith(VERSION_CONFLICT);
  }

  /** The request keys (requestKey) of the signals and cancel requests on a run's current branch, read whole. */
  async function requestsOn(tx: Tx, run: ExecutionRow): Promise<Set<string>> {
    const rows = await tx
      .select()
      .from(historyEvents)
      .where(and(runOf(historyEvents, run), inArray(historyEvents.eventType, ["WORKFLOW_EXECUTION_SIGNALED", "WORKFLOW_EXECUTION_CANCEL_REQUESTED"])));
    return new Set(rows.map((r) => requestKey(run.runId, eventFromRow(r))));
  }

  /**
   * Of keys (requestKey of lost requests), the ones the run's current branch holds already,
   * read for those keys only: a branch re-applied a page at a time does not read back at each
   * page every signal re-applied before it. A request id is found in request_ids; one recorded
   * for another run of the workflow (its first holder) may be on this run too, and is looked
   * for in the run's whole branch. A request without a request id is on the branch when the
   * branch holds its original event (same run, event id and version).
   */
  async function presentOf(tx: Tx, run: ExecutionRow, keys: string[]): Promise<Set<string>> {
    const r = requestIds;
    const recorded = (await Promise.all(chunksOf(keys, ROWS_PER_INSERT).map((chunk) => tx
      .select({ requestId: r.requestId, runId: r.runId })
      .from(r)
      .where(and(eq(r.namespaceId, run.namespaceId), eq(r.workflowId, run.workflowId), inArray(r.requestId, chunk)))))).flat();
    if (recorded.some((row) => row.runId !== run.runId)) return requestsOn(tx, run);
    const present = new Set(recorded.map((row) => row.requestId));
    const origins = new Map(keys.flatMap((k) => {
      const o = originOf(k);
      return o && o.runId === run.runId ? [[o.eventId, { key: k, version: o.version }] as const] : [];
    }));
    const h = historyEvents;
    for (const chunk of chunksOf([...origins.keys()], ROWS_PER_INSERT)) {
      const rows = await tx.select({ eventId: h.eventId, version: h.version }).from(h).where(and(runOf(h, run), inArray(h.eventId, chunk)));
      for (const row of rows) if (origins.get(row.eventId)?.version === row.version) present.add(origins.get(row.eventId)!.key);
    }
    return present;
  }

  /**
   * On the namespace's active cluster, appends the signals and cancel requests of lost
   * events that the current branch lacks (by requestKey; `origin` is the run the lost events
   * were written to). Elsewhere nothing: the active cluster does it when the lost branch
   * reaches it. Requests of a run retired by a version conflict go to the workflow's run that won.
   * Returns whether the lost requests are all on the current branch now (false when left).
   */
  async function reapply(tx: Tx, cached: NamespaceRecord, key: RunKey, lost: HistoryEvent[], origin = key.runId): Promise<boolean> {
    const candidates = lost.filter((e) => e.attributes.case && REAPPLIED.has(e.attributes.case));
    if (!candidates.length || !cached.isGlobal) return true;
    // Read now, not from the cache: a namespace activated here after this apply read it would
    // otherwise be missed both here and by the activation's sweep (conflict-sweep.ts).
    const ns = await readNamespaceUnderBarrier(tx, cached);
    if (!ns || ns.activeClusterName !== cluster.clusterName) return false;
    let run = await lockRun(tx, key.namespaceId, key.workflowId, key.runId);
    if (run && run.status !== "RUNNING" && (await retiredByConflict(tx, run))) run = await lockRun(tx, key.namespaceId, key.workflowId, "");
    if (!run || run.status !== "RUNNING") {
      // A closed run takes no more events: the lost requests stay readable on their branch.
      log.warn("lost signals and cancel requests not re-applied: the run is closed on the current branch", {
        workflowId: key.workflowId, runId: key.runId, events: candidates.map((e) => Number(e.eventId)),
      });
      return false;
    }
    const present = await presentOf(tx, run, candidates.map((e) => requestKey(origin, e)));
    const events: NewEvent[] = [];
    const ids: { requestId: string; eventId: number }[] = [];
    let cancel = run.cancelRequested;
    for (const e of candidates) {
      const requestId = requestKey(origin, e);
      if (present.has(requestId)) continue;
      const isCancel = e.attributes.case === "workflowExecutionCancelRequestedEventAttributes";
      if (isCancel && cancel) continue;
      cancel ||= isCancel;
      present.add(requestId);
      ids.push({ requestId, eventId: run.nextEventId + events.length });
      events.push({ attributes: { case: e.attributes.case, value: { ...e.attributes.value, requestId } } as NewEvent["attributes"] });
    }
    if (!events.length) return true;
    await writeAsActive(tx, ns, run, { events, ...(cancel && !run.cancelRequested ? { cancelRequested: true } : {}) });
    const target = { namespaceId: run.namespaceId, workflowId: run.workflowId, runId: run.runId };
    // A client retrying one of these requests is answered with the re-applied event.
    await Promise.all(chunksOf(ids, ROWS_PER_INSERT).map((chunk) => tx
      .insert(requestIds)
      .values(chunk.map((r) => ({ ...target, ...r })))
      .onConflictDoUpdate({ target: [requestIds.namespaceId, requestIds.workflowId, requestIds.requestId], set: { runId: run.runId, eventId: sql`excluded.event_id` } })));
    log.info("re-applied lost signals and cancel requests", { workflowId: run.workflowId, runId: run.runId, events: ids });
    return true;
  }

  /** A write of the active cluster from inside an apply; refused writes are retried, not dead-lettered. */
  async function writeAsActive(tx: Tx, ns: NamespaceRecord, run: ExecutionRow, change: Parameters<Writer["append"]>[3]): Promise<void> {
    try {
      await writer.append(tx, ns, run, change);
    } catch (e) {
      // Not this cluster's to write after all (it failed over meanwhile): retried until the namespace settles.
      if (e instanceof NamespaceChanged || (e instanceof TernError && e.kind === "unavailable")) throw new RetryableReplicationError(e.message);
      throw e;
    }
  }

  /**
   * What the active cluster owes a run after conflicts it may not have been active for:
   * a ZOMBIE run is retired, and the requests on every kept branch that the current one
   * lacks are re-applied (by request id, so repeating this is harmless). Run when a
   * namespace becomes active here and at start. Of a kept branch only the events past what
   * is on the current branch already (reappliedThrough) are read: a long branch is not read
   * again at every activation.
   */
  async function settle(tx: Tx, ns: NamespaceRecord, key: RunKey): Promise<void> {
    await lockRunKey(tx, key);
    const run = await lockRun(tx, key.namespaceId, key.workflowId, key.runId);
    if (!run) return;
    if (run.status === "ZOMBIE") {
      const current = await lockRun(tx, key.namespaceId, key.workflowId, "");
      await retire(tx, ns, key, current && current.runId !== key.runId ? current : key);
    }
    for (const b of await loadBranches(tx, key)) {
      const last = lastEventIdOf(b.versionHistory);
      const from = Math.max(b.forkEventId, b.reappliedThrough) + 1;
      if (from > last) continue;
      if (await reapply(tx, ns, key, await readBranchEvents(tx, key, b.branchId, from, last + 1))) await markReapplied(tx, key, b.branchId, last);
    }
  }

  return { resolve, openRival, demote, retire, settle };
}

export type ConflictResolver = ReturnType<typeof createConflictResolver>;

const branchKey = (k: RunKey, branchId: number) => and(runOf(historyBranches, k), eq(historyBranches.branchId, branchId));

/**
 * What identifies a request wherever it is re-applied: its request id, or for one sent without
 * (the API allows it) its original event, `reapply:` run id, event id and version. A re-applied
 * copy carries that key as its request id, so it is known again on any branch and cluster, and
 * the original event itself is known by it on the branch that holds it.
 */
function requestKey(runId: string, e: HistoryEvent): string {
  return requestIdOf(e) || `${ORIGIN}${runId}:${e.eventId}:${e.version}`;
}

const ORIGIN = "reapply:";

/** The original event a requestKey without a request id names, or undefined for a request id. */
function originOf(key: string): { runId: string; eventId: number; version: number } | undefined {
  const m = key.startsWith(ORIGIN) ? /^(.*):(\d+):(\d+)$/.exec(key.slice(ORIGIN.length)) : null;
  return m ? { runId: m[1]!, eventId: Number(m[2]), version: Number(m[3]) } : undefined;
}
