import { and, asc, eq, gt, lte, or, sql } from "drizzle-orm";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { GetNamespaceReplicationTasksRequest, GetNamespaceReplicationTasksResponseSchema } from "../src/gen/tern/admin/v1/service_pb";
import { unavailable } from "../src/errors";
import { exactNumber, namespaceToProto } from "../src/frontend/convert";
import { createLongPolls } from "../src/long-polls";
import { listen, type EventNotifier, type Listening } from "../src/history/notifier";
import type { Db } from "../src/persistence/database";
import { clusterMetadata, namespaceReplicationTasks } from "../src/persistence/schema";
import { ackKey } from "./ack-levels";
import { connectionDisabled } from "./page-reader";
import type { NamespaceQueueWatch } from "./namespace-queue-watch";
import { advanceAckLevel, namespaceQueueMax, type StoredNamespace } from "./namespace-queue";

/** Notifier key the registry wakes after committing a namespace task. */
export const NAMESPACE_QUEUE_KEY = "namespace-queue";

/** The longest a poll is held open: a receiver that hears this queue polls at least this often. */
export const MAX_WAIT_MS = 30_000;

export interface NamespaceSenderDeps {
  db: Db;
  /** This cluster's name, for the refusal of a peer whose connection is disabled here. */
  currentCluster: string;
  /** Woken (key NAMESPACE_QUEUE_KEY) when a namespace task commits here; notified with ackKey(peer) on acks. */
  wake: EventNotifier;
  /** Re-reads the queue this often while long-polling, for tasks committed by other processes. */
  pollMs?: number;
  /** Another read's find of the queue's max: one since the last re-read that found nothing new spares it. */
  watch?: NamespaceQueueWatch;
}

type Response = MessageInitShape<typeof GetNamespaceReplicationTasksResponseSchema>;

/**
 * Serves this cluster's namespace replication queue to the remote clusters'
 * namespace receivers (replication/namespace-receiver.ts): long poll, filtered to the
 * receiver's namespaces, and the request's after_task_id recorded as its outbound ack.
 */
export function createNamespaceSender({ db, currentCluster, wake, pollMs = 1000, watch }: NamespaceSenderDeps) {
  const polls = createLongPolls(() => unavailable("this server is shutting down; retry"));
  /** Waits until a task past after exists, the wait ends, or signal aborts; returns the queue's max. */
  async function waitPast(after: number, waitMs: number, signal: AbortSignal): Promise<number> {
    const deadline = Date.now() + Math.min(Math.max(waitMs, 0), MAX_WAIT_MS);
    for (;;) {
      // Listening before the read: a graceful failover's switch committed in between would
      // otherwise sleep until the next re-read.
      const left = deadline - Date.now();
      const listening = left > 0 ? listen(wake, NAMESPACE_QUEUE_KEY, left, signal) : undefined;
      try {
        const readAt = Date.now();
        const max = await namespaceQueueMax(db);
        if (max > after || !listening || signal.aborted) return max;
        await recheckDue(listening, after, readAt);
      } finally {
        listening?.cancel();
      }
    }
  }

  /**
   * Resolves when listening wakes (a commit here, the watch's max moved, the wait's end) or a
   * re-read is due: each pollMs, unless the watch has a read begun after the last one known
   * (at first this poll's own, begun at readAt) that found nothing past after. A commit of
   * another process then comes at the watch's next read (the history sender's, each
   * recheckMs) or, its reads stopped, at this one's next tick: within two pollMs at most.
   */
  async function recheckDue(listening: Listening, after: number, readAt: number): Promise<void> {
    let woke = false;
    void listening.woke.then(() => (woke = true));
    for (let known = readAt; ; ) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([listening.woke, new Promise((resolve) => (timer = setTimeout(resolve, pollMs)))]);
      clearTimeout(timer);
      const seen = woke ? undefined : watch?.seenAfter(known);
      if (!seen || seen.max > after) return;
      known = seen.at;
    }
  }

  async function refuseDisabled(clusterName: string): Promise<void> {
    const [row] = await db.select({ enabled: clusterMetadata.enableConnection }).from(clusterMetadata).where(eq(clusterMetadata.clusterName, clusterName));
    if (row && !row.enabled) throw connectionDisabled(clusterName, currentCluster);
  }

  async function serve(r: GetNamespaceReplicationTasksRequest, signal: AbortSignal): Promise<Response> {
    const after = exactNumber(r.afterTaskId, "after_task_id");
    const size = r.pageSize > 0 ? Math.min(r.pageSize, 1000) : 100;
    if (r.clusterName) {
      await refuseDisabled(r.clusterName);
      // The receiver asks after what it has applied: that is its ack.
      await advanceAckLevel(db, { remote: r.clusterName, direction: "outbound", queue: "namespace", shardId: 0 }, after, await namespaceQueueMax(db));
      wake.notify(ackKey(r.clusterName));
    }
    // Read the max first: ids commit in order, so every task up to it is visible below.
    const max = await waitPast(after, r.waitTimeoutMs, signal);
    // Again after the wait: a poll open when the connection was disabled would otherwise
    // carry the changes made since (history pages check at every read too).
    if (r.clusterName) await refuseDisabled(r.clusterName);
    const t = namespaceReplicationTasks;
    const listed = (key: string) => sql`(${t.namespace}->${key}) @> ${JSON.stringify([r.clusterName])}::jsonb`;
    const rows = await db
      .select()
      .from(t)
      .where(and(gt(t.taskId, after), lte(t.taskId, max), r.clusterName ? or(listed("clusters"), listed("previousClusters")) : undefined))
      .orderBy(asc(t.taskId))
      .limit(size);
    const last = rows.length === size ? Number(rows.at(-1)!.taskId) : Math.max(max, after);
    return {
      tasks: rows.map((row) => {
        const stored = row.namespace as StoredNamespace;
        return {
          taskId: BigInt(row.taskId),
          namespace: namespaceToProto(recordOf(stored)),
          createTime: timestampFromDate(row.createdAt),
          joinsAskingCluster: joins(stored, r.clusterName),
        };
      }),
      maxTaskId: BigInt(max),
      lastTaskId: BigInt(last),
    };
  }

  return {
    getTasks: (r: GetNamespaceReplicationTasksRequest, signal?: AbortSignal): Promise<Response> => polls.run(signal, (s) => serve(r, s)),
    /** Ends open long polls (they answer at once) and refuses new ones; resolves once none runs. */
    stop: polls.end,
  };
}

export type NamespaceSender = ReturnType<typeof createNamespaceSender>;

/** Whether the change stored adds cluster to the namespace's clusters. */
function joins(s: StoredNamespace, cluster: string): boolean {
  return !!cluster && s.clusters.includes(cluster) && !s.previousClusters.includes(cluster);
}

function recordOf(s: StoredNamespace) {
  const { previousClusters: _, ...rest } = s;
  return { ...rest, createdAt: new Date(s.createdAt), updatedAt: new Date(s.updatedAt) };
}
