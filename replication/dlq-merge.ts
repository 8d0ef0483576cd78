import { create } from "@bufbuild/protobuf";
import { and, eq, sql } from "drizzle-orm";
import type { RemoteClientPool, RemoteClients } from "../src/cluster/remote-client";
import { errorReason, loggableError, notFound } from "../src/errors";
import { MergeReplicationDlqResponseSchema, type MergeReplicationDlqResponse, type ReplicationDlqEntry } from "../src/gen/tern/admin/v1/service_pb";
import { runKeyText } from "../src/history/branch-store";
import type { EventNotifier } from "../src/history/notifier";
import { readNamespaceUnderBarrier } from "../src/history/namespace-guard";
import type { Writer } from "../src/history/writer";
import type { Logger } from "../src/observability/log";
import type { Db } from "../src/persistence/database";
import { clusterMetadata, replicationDlq } from "../src/persistence/schema";
import { RetryableReplicationError, type HistoryApplier, type IncomingTask } from "./applier";
import { entryOf, HELD_BEHIND, type DlqFilter, type DlqRow, type ReplicationDlq } from "./dlq";
import { fetchOutside } from "./gap-fetch";
import { rawFetcher } from "./page-transactions";
import { versionHistoryFromProto, versionHistoryToProto } from "./version-history";
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
}

/**
 * AdminService.MergeReplicationDlq: re-fetches each entry's events from its source and
 * re-applies them through the normal applier (gap repair included), in task order. An
 * entry that applies is deleted in the same transaction; one that fails is kept, and so
 * are the later entries of its run, so a run is never applied out of order.
 */
export function createDlqMerge({ db, dlq, applier, writer, clients, notifier, log, rounds = MERGE_ROUNDS }: DlqMergeDeps) {
  async function sourceClients(name: string): Promise<RemoteClients> {
    const [row] = await db.select().from(clusterMetadata).where(and(eq(clusterMetadata.clusterName, name), eq(clusterMetadata.isCurrent, false)));
    if (!row) throw notFound(`source cluster ${shown(name)} is not a remote cluster of this one`);
    return clients.get(row.rpcAddress);
  }

  /**
   * The entry's events from its source, of the task's branch: a conflict resolution there may
   * have made another branch current since, whose events of the range are not the task's (they
   * were merged as the task's, and the task's own never came). An entry stored before the DLQ
   * kept the task's version history is merged from the source's current branch, as before.
   */
  async function fetchEntry(e: DlqRow, source: RemoteClients, signal?: AbortSignal): Promise<IncomingTask> {
    const pinned = e.versionHistory?.length ? e.versionHistory : undefined;
    const res = await source.admin.getWorkflowExecutionRawHistory(
      {
        namespaceId: e.namespaceId, workflowId: e.workflowId, runId: e.runId, firstEventId: BigInt(e.firstEventId), nextEventId: BigInt(e.nextEventId),
        versionHistory: pinned && versionHistoryToProto(pinned),
      },
      { signal, timeoutMs: 30_000 },
    );
    // A source that no longer holds the whole range on the task's branch: the entry is kept (purge drops it), never merged short.
    if (res.events.length !== e.nextEventId - e.firstEventId || Number(res.events[0]?.eventId) !== e.firstEventId) {
      throw new Error(
        `source ${e.sourceCluster} holds ${res.events.length} of events [${e.firstEventId}, ${e.nextEventId}) of ${e.workflowId} run ${e.runId}` +
          `${pinned ? " on the task's branch" : ""}: the entry is kept; purge it to drop it`,
      );
    }
    return {
      namespaceId: e.namespaceId, workflowId: e.workflowId, runId: e.runId, firstEventId: e.firstEventId, nextEventId: e.nextEventId,
      versionHistory: pinned ?? versionHistoryFromProto(res.versionHistory?.items), events: res.events,
    };
  }

  /**
   * Applies one entry and deletes it in one transaction; false when a purge deleted it since
   * the merge listed it. The delete comes first: a purge that came before wins (the entry is
   * not applied, as the purge said), and one after waits for this transaction.
   */
  async function mergeOne(e: DlqRow, source: RemoteClients, signal?: AbortSignal): Promise<boolean> {
    const task = await fetchEntry(e, source, signal);
    const namespaces = await applier.namespacesOf([task]).catch((err) => {
      // The receiver retries such a task; a merge does not, and said "retrying" (the namespace deleted here since).
      throw err instanceof RetryableReplicationError ? namespaceGone(e) : err;
    });
    const grown = await fetchOutside(rawFetcher(e.sourceCluster, source, log, signal), (fetchRaw) =>
      writer.transact("MergeReplicationDlq", async (tx) => {
        // Under the barrier a delete takes (namespace/delete.ts): one committed meanwhile took the entry
        // with the namespace, and one after waits for this. Before, a delete in between left the runs applied here.
        const ns = await readNamespaceUnderBarrier(tx, namespaces.get(e.namespaceId)!);
        if (!ns) throw namespaceGone(e);
        const [held] = await tx.delete(replicationDlq).where(keyOf(e)).returning({ taskId: replicationDlq.taskId });
        return held ? applier.applyTask(tx, ns, task, fetchRaw) : undefined;
      }, signal),
    );
    if (grown) notifier.notify(e.runId);
    return grown !== undefined;
  }

  /**
   * Merges the entries filter matches, in task order, and then those that came meanwhile (a
   * held run's tasks go on arriving: the last of them were left in the DLQ and the run held), up
   * to `rounds` listings. What came after the last is answered as failed (LEFT_FOR_NEXT_MERGE): the
   * merge answered all merged before, and those runs stayed held, their later tasks going to the DLQ
   * too, until an operator merged again.
   */
  async function merge(filter: DlqFilter, signal?: AbortSignal): Promise<MergeReplicationDlqResponse> {
    const stuck = new Map<string, string>();
    const sources = new Map<string, Promise<RemoteClients>>();
    const tried = new Set<string>();
    const failed: ReplicationDlqEntry[] = [];
    let merged = 0;
    for (let round = 0; ; round++) {
      const entries = (await dlq.all(filter)).filter((e) => !tried.has(entryKeyText(e)));
      if (!entries.length && round === 0) await dlq.refuseUnknownSource(filter);
      if (!entries.length) break;
      if (round === rounds) {
        failed.push(...entries.map((e) => entryOf({ ...e, lastError: LEFT_FOR_NEXT_MERGE })));
        break;
      }
      for (const e of entries) {
        tried.add(entryKeyText(e));
        const run = runKeyText(e);
        if (stuck.has(run)) {
          failed.push(entryOf({ ...e, lastError: HELD_BEHIND }));
          continue;
        }
        try {
          if (!sources.has(e.sourceCluster)) sources.set(e.sourceCluster, sourceClients(e.sourceCluster));
          if (await mergeOne(e, await sources.get(e.sourceCluster)!, signal)) merged++;
        } catch (err) {
          // The caller's deadline passed or it left: the entries not merged yet did not fail, they were not tried.
          signal?.throwIfAborted();
          // As the receiver stores it (page-applier.ts): the reason, never the statement or its values.
          const error = errorReason(err);
          stuck.set(run, error);
          const kept = await db.update(replicationDlq).set({ attempts: sql`${replicationDlq.attempts} + 1`, lastError: error }).where(keyOf(e)).returning({ taskId: replicationDlq.taskId });
          // Purged meanwhile: gone, not failed.
          if (kept.length) failed.push(entryOf({ ...e, attempts: e.attempts + 1, lastError: error }));
          log.warn("DLQ entry still fails", { source: e.sourceCluster, shard: e.shardId, taskId: e.taskId, workflowId: e.workflowId, error: loggableError(err) });
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

/** Why an entry that reached the DLQ after a merge's last listing was not merged by it. */
export const LEFT_FOR_NEXT_MERGE = "not merged: it reached the DLQ after this merge's last listing (its run's tasks kept coming); its run stays held: merge again";

/** Why an entry of a namespace this cluster no longer holds cannot be merged. */
const namespaceGone = (e: DlqRow) =>
  new Error(`namespace ${e.namespaceId} is not on this cluster (deleted here): there is nothing to merge the entry into; purge it to drop it`);

const entryKeyText = (e: DlqRow) => `${e.sourceCluster}/${e.shardId}/${e.taskId}`;

const keyOf = (e: DlqRow) =>
  and(eq(replicationDlq.sourceCluster, e.sourceCluster), eq(replicationDlq.shardId, e.shardId), eq(replicationDlq.taskId, e.taskId));
