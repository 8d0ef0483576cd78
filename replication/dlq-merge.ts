import { create } from "@bufbuild/protobuf";
import { and, asc, eq, gt, inArray, sql } from "drizzle-orm";
import type { RemoteClientPool, RemoteClients } from "../src/cluster/remote-client";
import { errorReason, loggableError, notFound } from "../src/errors";
import { MergeReplicationDlqResponseSchema, type MergeReplicationDlqResponse, type ReplicationDlqEntry } from "../src/gen/tern/admin/v1/service_pb";
import { runKeyText } from "../src/history/branch-store";
import type { EventNotifier } from "../src/history/notifier";
import { readNamespaceUnderBarrier } from "../src/history/namespace-guard";
import type { Writer } from "../src/history/writer";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import type { Logger } from "../src/observability/log";
import type { Db, Tx } from "../src/persistence/database";
import { clusterMetadata, replicationDlq, type VersionHistoryItem } from "../src/persistence/schema";
import { RetryableReplicationError, type HistoryApplier, type IncomingTask } from "./applier";
import { entryOf, HELD_BEHIND, type DlqFilter, type DlqRow, type ReplicationDlq } from "./dlq";
import { LEFT_FOR_NEXT_MERGE } from "./dlq-reasons";
import { fetchOutside } from "./gap-fetch";
import { RAW_HISTORY_PAGE_BYTES, rawFetcher } from "./page-transactions";
import { mergeRunTasks } from "./task-merge";
import { firstDivergence, lastEventIdOf, versionHistoryFromProto, versionHistoryToProto } from "./version-history";
import { shown } from "../src/shown";

export interface DlqMergeDeps {
  db: Db;
  dlq: ReplicationDlq;
  applier: HistoryApplier;
  writer: Pick<Writer, "transact">;
  clients: RemoteClientPool;
  notifier: EventNotifier;
  log: Logger;
  /** How many times a merge lists the DLQ: MERGE_ROUNDS unless set (tests). */
  rounds?: number;
  /** How many runs of a merge's transaction take a run's entries that came since its listing: MAX_CHASES unless set (tests). */
  chases?: number;
}

/**
 * AdminService.MergeReplicationDlq: re-fetches each entry's events from its source and
 * re-applies them through the normal applier (gap repair included), in task order. An
 * entry that applies is deleted in the same transaction; one that fails is kept, and so
 * are the later entries of its run, so a run is never applied out of order.
 */
export function createDlqMerge({ db, dlq, applier, writer, clients, notifier, log, rounds = MERGE_ROUNDS, chases: maxChases = MAX_CHASES }: DlqMergeDeps) {
  async function sourceClients(name: string): Promise<RemoteClients> {
    const [row] = await db.select().from(clusterMetadata).where(and(eq(clusterMetadata.clusterName, name), eq(clusterMetadata.isCurrent, false)));
    if (!row) throw notFound(`source cluster ${shown(name)} is not a remote cluster of this one`);
    return clients.get(row.rpcAddress);
  }

  /**
   * Events [first, next) of a run from its source, of the branch pinned (a task's: a conflict
   * resolution there may have made another branch current since, whose events of the range are
   * not the task's), a page at a time. Without pinned (entries stored before the DLQ kept the
   * task's version history) the source's current branch as its first page finds it, the later
   * pages asked on that branch: a range of such entries is of one branch, however long, even
   * where the source's current branch changes between pages. A source that no longer holds the
   * whole range on that branch fails: the entries are kept (purge drops them), never merged short.
   */
  async function fetchRange(e: DlqRow, first: number, next: number, pinned: VersionHistoryItem[] | undefined, source: RemoteClients, signal?: AbortSignal) {
    const events: HistoryEvent[] = [];
    let branch = pinned;
    while (first + events.length < next) {
      const from = first + events.length;
      const res = await source.admin.getWorkflowExecutionRawHistory(
        {
          namespaceId: e.namespaceId, workflowId: e.workflowId, runId: e.runId, firstEventId: BigInt(from), nextEventId: BigInt(next),
          versionHistory: branch ? versionHistoryToProto(branch) : undefined, maximumPageBytes: BigInt(RAW_HISTORY_PAGE_BYTES),
        },
        { signal, timeoutMs: 30_000 },
      );
      if (!res.events.length || res.events.length > next - from || Number(res.events[0]?.eventId) !== from) {
        throw new Error(
          `source ${e.sourceCluster} holds ${events.length + res.events.length} of events [${first}, ${next}) of ${e.workflowId} run ${e.runId}` +
            `${pinned ? " on the task's branch" : ""}: the entry is kept; purge it to drop it`,
        );
      }
      events.push(...res.events);
      branch ??= versionHistoryFromProto(res.versionHistory?.items);
    }
    return { events, versionHistory: branch ?? [] };
  }

  /**
   * The entries' tasks (of one run, in task order), fetched a range at a time: consecutive
   * entries whose events follow on and lie on the later one's branch come in one range, fetched
   * on that branch; consecutive entries stored without a version history whose events follow on,
   * in one range of the source's current branch (fetched each on its own, a DLQ of such entries
   * took a fetch per entry: each got the current branch's events of its range all the same).
   */
  async function fetchEntries(entries: DlqRow[], source: RemoteClients, signal?: AbortSignal): Promise<IncomingTask[]> {
    const tasks: IncomingTask[] = [];
    for (const range of rangesOf(entries)) {
      const last = range.at(-1)!;
      const pinned = last.versionHistory?.length ? last.versionHistory : undefined;
      const { events, versionHistory } = await fetchRange(last, range[0]!.firstEventId, last.nextEventId, pinned, source, signal);
      for (const e of range) {
        tasks.push({
          namespaceId: e.namespaceId, workflowId: e.workflowId, runId: e.runId, firstEventId: e.firstEventId, nextEventId: e.nextEventId,
          versionHistory: e.versionHistory?.length ? e.versionHistory : versionHistory,
          events: events.slice(e.firstEventId - range[0]!.firstEventId, e.nextEventId - range[0]!.firstEventId),
        });
      }
    }
    return tasks;
  }

  /**
   * Applies entries (of one run, in task order) and deletes them in one transaction; returns how
   * many it merged: those a purge deleted since the merge listed them are not applied (the delete
   * comes first: a purge that came before wins, one after waits for this transaction), and the
   * others apply without them, in order, merged per run (mergeRunTasks). With chase (the run's
   * last listed entries), the run's entries that came since the listing are merged too (chased).
   */
  async function mergeEntries(entries: DlqRow[], source: RemoteClients, signal?: AbortSignal, chase = false): Promise<number> {
    const first = entries[0]!;
    const tasks = await fetchEntries(entries, source, signal);
    const namespaces = await applier.namespacesOf([first]).catch((err) => {
      // The receiver retries such a task; a merge does not, and said "retrying" (the namespace deleted here since).
      throw err instanceof RetryableReplicationError ? namespaceGone(first) : err;
    });
    let chases = chase ? maxChases : 0;
    const applied = await fetchOutside(rawFetcher(first.sourceCluster, source, log, signal), (fetchRaw) =>
      writer.transact("MergeReplicationDlq", async (tx) => {
        // Under the barrier a delete takes (namespace/delete.ts): one committed meanwhile took the entries
        // with the namespace, and one after waits for this. Before, a delete in between left the runs applied here.
        const ns = await readNamespaceUnderBarrier(tx, namespaces.get(first.namespaceId)!);
        if (!ns) throw namespaceGone(first);
        const held = await tx
          .delete(replicationDlq)
          .where(and(eq(replicationDlq.sourceCluster, first.sourceCluster), eq(replicationDlq.shardId, first.shardId), inArray(replicationDlq.taskId, entries.map((e) => e.taskId))))
          .returning({ taskId: replicationDlq.taskId });
        const kept = new Set(held.map((h) => h.taskId));
        let grown = 0;
        for (const t of mergeRunTasks(tasks.filter((_, i) => kept.has(entries[i]!.taskId)))) grown += await applier.applyTask(tx, ns, t, fetchRaw);
        const chased = kept.size === entries.length && chases-- > 0 ? await chaseRun(tx, entries.at(-1)!) : [];
        if (chased.length) grown += await applier.applyTask(tx, ns, chasedTask(chased), fetchRaw);
        return { merged: kept.size + chased.length, grown };
      }, signal),
    );
    if (applied.grown) notifier.notify(first.runId);
    return applied.merged;
  }

  /**
   * The run's entries after last (held behind it since the merge listed them: its tasks go on
   * arriving), deleted, when they follow on from last as one range; none otherwise (the next
   * listing takes them). Locked first: a receiver's read of the run's entries (dlq.ts heldRuns)
   * waits for this transaction and finds them gone, so the run's next task applies, not held.
   * Their events come through the apply's gap repair (fetched outside the transaction, which is
   * run again: fetchOutside), as far as the source's branch of the last one: no window is left
   * between the listing and this transaction in which a task could be held behind the run again.
   */
  async function chaseRun(tx: Tx, last: DlqRow): Promise<DlqRow[]> {
    const d = replicationDlq;
    const later = await tx
      .select()
      .from(d)
      .where(and(eq(d.sourceCluster, last.sourceCluster), eq(d.shardId, last.shardId), eq(d.namespaceId, last.namespaceId), eq(d.workflowId, last.workflowId), eq(d.runId, last.runId), gt(d.taskId, last.taskId)))
      .orderBy(asc(d.taskId))
      .for("update");
    const ranges = rangesOf([last, ...later]);
    // Chased events come through gap repair on the last entry's branch: entries without one are left to the next listing.
    if (!later.length || ranges.length !== 1 || !last.versionHistory?.length) return [];
    await tx.delete(d).where(and(eq(d.sourceCluster, last.sourceCluster), eq(d.shardId, last.shardId), inArray(d.taskId, later.map((e) => e.taskId))));
    return later;
  }

  /**
   * Merges entries (of one run, in task order) one at a time, as far as they apply: the one
   * that fails is kept with its reason and the later ones held behind it (stuck), so a run is
   * never applied out of order. What a range that failed (mergeEntries) is tried again with, to
   * find the entry at fault. Returns how many it merged.
   */
  async function mergeApart(entries: DlqRow[], source: () => Promise<RemoteClients>, stuck: Map<string, string>, failed: ReplicationDlqEntry[], signal?: AbortSignal): Promise<number> {
    let merged = 0;
    for (const e of entries) {
      if (stuck.has(runKeyText(e))) {
        failed.push(entryOf({ ...e, lastError: HELD_BEHIND }));
        continue;
      }
      try {
        merged += await mergeEntries([e], await source(), signal);
      } catch (err) {
        // The caller's deadline passed or it left: the entries not merged yet did not fail, they were not tried.
        signal?.throwIfAborted();
        // As the receiver stores it (page-applier.ts): the reason, never the statement or its values.
        const error = errorReason(err);
        stuck.set(runKeyText(e), error);
        const kept = await db.update(replicationDlq).set({ attempts: sql`${replicationDlq.attempts} + 1`, lastError: error }).where(keyOf(e)).returning({ taskId: replicationDlq.taskId });
        // Purged meanwhile: gone, not failed.
        if (kept.length) failed.push(entryOf({ ...e, attempts: e.attempts + 1, lastError: error }));
        log.warn("DLQ entry still fails", { source: e.sourceCluster, shard: e.shardId, taskId: e.taskId, workflowId: e.workflowId, error: loggableError(err) });
      }
    }
    return merged;
  }

  /**
   * Merges the entries filter matches, a run at a time, in task order: up to MERGE_BATCH of a
   * run's entries with one fetch from the source per range and one transaction (before, a fetch
   * and a transaction per entry: about 12 ms each, so a DLQ of 50,000 passed the CLI's 10
   * minutes). A batch that fails is merged again an entry at a time (mergeApart). Then it merges
   * the entries that came meanwhile (a held run's tasks go on arriving: the last of them were
   * left in the DLQ and the run held), up to `rounds` listings. What came after the last is
   * answered as failed (LEFT_FOR_NEXT_MERGE): the merge answered all merged before, and those
   * runs stayed held, their later tasks going to the DLQ too, until an operator merged again.
   */
  async function merge(filter: DlqFilter, signal?: AbortSignal): Promise<MergeReplicationDlqResponse> {
    const stuck = new Map<string, string>();
    const sources = new Map<string, Promise<RemoteClients>>();
    const sourceOf = (name: string) => () => {
      if (!sources.has(name)) sources.set(name, sourceClients(name));
      return sources.get(name)!;
    };
    const tried = new Set<string>();
    const failed: ReplicationDlqEntry[] = [];
    let merged = 0;
    for (let round = 0; ; round++) {
      const entries = (await dlq.all(filter)).filter((e) => !tried.has(entryKeyText(e)));
      if (!entries.length && round === 0) await dlq.refuseBadFilter(filter);
      if (!entries.length) break;
      if (round === rounds) {
        failed.push(...entries.map((e) => entryOf({ ...e, lastError: LEFT_FOR_NEXT_MERGE })));
        break;
      }
      for (const e of entries) tried.add(entryKeyText(e));
      for (const run of byRun(entries)) {
        for (let i = 0; i < run.length; i += MERGE_BATCH) {
          const batch = run.slice(i, i + MERGE_BATCH);
          const source = sourceOf(batch[0]!.sourceCluster);
          if (!stuck.has(runKeyText(batch[0]!))) {
            try {
              merged += await mergeEntries(batch, await source(), signal, i + MERGE_BATCH >= run.length);
              continue;
            } catch {
              signal?.throwIfAborted();
            }
          }
          merged += await mergeApart(batch, source, stuck, failed, signal);
        }
      }
    }
    await dlq.refreshGauge();
    if (merged) log.info("merged DLQ entries", { merged, failed: failed.length });
    return create(MergeReplicationDlqResponseSchema, { merged: BigInt(merged), failed });
  }

  return { merge };
}

export type DlqMerge = ReturnType<typeof createDlqMerge>;

/** Listings of the DLQ a merge works through: a run that never stops getting tasks does not keep it going for ever. */
const MERGE_ROUNDS = 10;

/** How many times a merge's transaction takes a run's entries that came since its listing (chaseRun) before it leaves them to the next listing. */
const MAX_CHASES = 20;

/** The task of chased entries (one range, in task order): their events come through the apply's gap repair, on the last one's branch. */
const chasedTask = (chased: DlqRow[]): IncomingTask => {
  const last = chased.at(-1)!;
  return {
    namespaceId: last.namespaceId, workflowId: last.workflowId, runId: last.runId, firstEventId: chased[0]!.firstEventId, nextEventId: last.nextEventId,
    versionHistory: last.versionHistory!, events: [],
  };
};

/** A run's entries one transaction of a merge takes at most (its events are held in memory meanwhile). */
const MERGE_BATCH = 1000;

/** Why an entry of a namespace this cluster no longer holds cannot be merged. */
const namespaceGone = (e: DlqRow) =>
  new Error(`namespace ${e.namespaceId} is not on this cluster (deleted here): there is nothing to merge the entry into; purge it to drop it`);

/** Entries (in task order) per run and source shard, each run's in task order, the runs in the order of their first entry. */
function byRun(entries: DlqRow[]): DlqRow[][] {
  const runs = new Map<string, DlqRow[]>();
  for (const e of entries) {
    const k = `${e.sourceCluster}/${e.shardId}/${runKeyText(e)}`;
    const run = runs.get(k);
    if (run) run.push(e);
    else runs.set(k, [e]);
  }
  return [...runs.values()];
}

/**
 * Consecutive entries (of one run, in task order) split where one range ends: an entry whose
 * events do not follow on from the one before, whose branch does not hold the one before's
 * events at their versions, or one stored with a version history and the other without. Entries
 * without one (stored before the DLQ kept it) were each merged from the source's current branch:
 * a range of them is too, the same events at one fetch, one branch for all (not one per fetch).
 */
function rangesOf(entries: DlqRow[]): DlqRow[][] {
  const ranges: DlqRow[][] = [];
  for (const e of entries) {
    const prev = ranges.at(-1)?.at(-1);
    const pinned = (r: DlqRow) => Boolean(r.versionHistory?.length);
    const sameBranch = prev && (pinned(prev) && pinned(e) ? onBranch(prev, e) : !pinned(prev) && !pinned(e));
    const follows = prev && prev.nextEventId === e.firstEventId && sameBranch;
    if (follows) ranges.at(-1)!.push(e);
    else ranges.push([e]);
  }
  return ranges;
}

/** Whether a's events lie on b's branch at the versions a's branch gave them. */
function onBranch(a: DlqRow, b: DlqRow): boolean {
  const diverges = firstDivergence(a.versionHistory!, b.versionHistory!);
  return lastEventIdOf(b.versionHistory!) >= a.nextEventId - 1 && (diverges === undefined || diverges >= a.nextEventId);
}

const entryKeyText = (e: DlqRow) => `${e.sourceCluster}/${e.shardId}/${e.taskId}`;

const keyOf = (e: DlqRow) =>
  and(eq(replicationDlq.sourceCluster, e.sourceCluster), eq(replicationDlq.shardId, e.shardId), eq(replicationDlq.taskId, e.taskId));
