import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import type { ReplicationTask } from "../src/gen/tern/admin/v1/service_pb";
import type { EventNotifier } from "../src/history/notifier";
import type { Writer } from "../src/history/writer";
import type { Logger } from "../src/observability/log";
import type { Metrics } from "../src/observability/metrics";
import type { Db } from "../src/persistence/database";
import { advanceInboundAck, loadInboundAck } from "./ack-levels";
import { isTaskFailure, type HistoryApplier } from "./applier";
import type { ReplicationDlq } from "./dlq";
import { sleep, type RemoteCluster, type ReplicationStream, type StreamReport } from "./manager";
import { createPageApplier, settleAll, type Applied } from "./page-apply";

export interface HistoryReceiverDeps {
  db: Db;
  cluster: CurrentCluster;
  applier: HistoryApplier;
  /** Transactions with retries and persistence metrics. */
  writer: Pick<Writer, "transact" | "transactPipelined">;
  /** Woken per run after an apply commits, for history long polls on this cluster. */
  notifier: EventNotifier;
  metrics: Metrics;
  log: Logger;
  /** Where tasks that fail past the retry budget go. */
  dlq: ReplicationDlq;
  /** Retry budget of one failing task before it goes to the DLQ. */
  retry?: Partial<RetryPolicy>;
  pageSize?: number;
  /** Page size while more than a page behind (the source caps it at 1000). */
  catchUpPageSize?: number;
  /** Long-poll wait asked of the source. */
  waitMs?: number;
  /** Wait asked of the source for the page after one being applied (see pull). */
  prefetchWaitMs?: number;
}

/** How often and how patiently a failing task is retried before it goes to the DLQ. */
export interface RetryPolicy {
  /** Attempts in all (the last failure sends the task to the DLQ). */
  attempts: number;
  backoffMs: number;
  maxBackoffMs: number;
}

const add = (into: Applied, more: Applied) => {
  into.grown.push(...more.grown);
  into.held += more.held;
};

/** What this process last saw of one remote shard, for status (not persisted). */
export interface InboundProgress {
  maxTaskId: number;
  ackLevel: number;
  /** Commit time on the source of the oldest task known to be unapplied. */
  oldestUnapplied?: Date;
}

/** One pulled page, ready to apply. */
interface Batch {
  remote: RemoteCluster;
  shardId: number;
  from: number;
  to: number;
  maxTaskId: number;
  tasks: ReplicationTask[];
  signal: AbortSignal;
}

/**
 * The receiving side of history replication (its counterpart is sender.ts): one stream
 * per remote shard pulls after the persisted inbound ack and applies each page in one
 * transaction that also moves the ack, so restarts give no gap and no duplicate. The next
 * page is fetched while one applies; the source is told the applied position apart
 * (acked_task_id), so it never counts a fetched but unapplied task as acked.
 */
export function createHistoryReceiver(deps: HistoryReceiverDeps) {
  const { db, cluster, applier, writer, metrics, log, dlq } = deps;
  const retry: RetryPolicy = { attempts: 5, backoffMs: 200, maxBackoffMs: 2_000, ...deps.retry };
  const pageSize = deps.pageSize ?? 200;
  const catchUpPageSize = Math.max(pageSize, deps.catchUpPageSize ?? 1000);
  const waitMs = deps.waitMs ?? 10_000;
  const prefetchWaitMs = Math.min(waitMs, deps.prefetchWaitMs ?? 50);
  const progress = new Map<string, InboundProgress>();
  const pages = createPageApplier({ applier, writer, dlq, metrics, log });

  /** Stores t in the DLQ in the transaction that moves the ack from..t past it. */
  async function deadLetter(b: Batch, t: ReplicationTask, from: number, attempts: number, e: unknown): Promise<Applied> {
    const error = (e as Error)?.message ?? String(e);
    await writer.transact("ReplicateHistoryDlq", (tx) =>
      settleAll([
        dlq.add(tx, b.remote.name, t, attempts, error),
        advanceInboundAck(tx, b.remote.name, b.shardId, { from, to: Number(t.taskId), maxTaskId: b.maxTaskId }),
      ]),
    );
    log.error("replication task moved to the DLQ", {
      remote: b.remote.name, shard: b.shardId, taskId: Number(t.taskId), workflowId: t.workflowId, runId: t.runId, attempts, error,
    });
    return { grown: [], held: 1 };
  }

  /** Applies one task with retries and backoff; past the budget it goes to the DLQ. Transient failures rethrow. */
  async function applyOne(b: Batch, t: ReplicationTask, from: number): Promise<Applied> {
    let backoff = retry.backoffMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await pages.apply(b, [t], from, Number(t.taskId));
      } catch (e) {
        failed(b, t, e, attempt);
        if (b.signal.aborted || !isTaskFailure(e)) throw e;
        if (attempt >= retry.attempts) return deadLetter(b, t, from, attempt, e);
        await sleep(backoff, b.signal);
        backoff = Math.min(backoff * 2, retry.maxBackoffMs);
      }
    }
  }

  /**
   * Applies a page at once; if that fails, task by task with a retry budget each, so the
   * tasks before a bad one land and the ones after it are not stalled by it.
   */
  async function applyBatch(b: Batch): Promise<void> {
    const labels = { remote_cluster: b.remote.name };
    let done: Applied;
    try {
      done = await pages.apply(b, b.tasks, b.from, b.to);
    } catch (batchError) {
      if (b.signal.aborted || !isTaskFailure(batchError)) throw failed(b, b.tasks[0], batchError);
      done = { grown: [], held: 0 };
      let at = b.from;
      for (const t of b.tasks) {
        add(done, await applyOne(b, t, at));
        at = progressOf(b.remote.name, b.shardId).ackLevel = Number(t.taskId);
      }
      add(done, await pages.apply(b, [], at, b.to));
    }
    if (done.held) await dlq.refreshGauge([b.remote.name]);
    const now = Date.now();
    for (const t of b.tasks) if (t.createTime) metrics.observe("replication_latency", labels, (now - timestampDate(t.createTime).getTime()) / 1000);
    metrics.inc("replication_tasks_applied", labels, b.tasks.length - done.held);
    for (const runId of new Set(done.grown)) deps.notifier.notify(runId);
  }

  /** Counts and logs a failed apply (divergence, unknown namespace, ...) and returns the error to rethrow. */
  function failed(b: Batch, t: ReplicationTask | undefined, e: unknown, attempt?: number): unknown {
    metrics.inc("replication_tasks_failed", { remote_cluster: b.remote.name });
    log.warn("replication task failed; retrying", {
      remote: b.remote.name, shard: b.shardId, taskId: t ? Number(t.taskId) : undefined, workflowId: t?.workflowId, runId: t?.runId, attempt,
      error: (e as Error)?.message ?? String(e),
    });
    return e;
  }

  function progressOf(remote: string, shardId: number): InboundProgress {
    const k = `${remote}/${shardId}`;
    let p = progress.get(k);
    if (!p) progress.set(k, (p = { maxTaskId: 0, ackLevel: 0 }));
    return p;
  }

  /** A page of remote's shard after `after`; the source records `acked` as applied here. */
  function fetchPage(remote: RemoteCluster, shardId: number, page: { after: number; acked: number; size: number; wait: number }, signal: AbortSignal) {
    const { after, acked, size, wait } = page;
    const res = remote.clients.admin.getReplicationTasks(
      { shardId, afterTaskId: BigInt(after), ackedTaskId: BigInt(acked), pageSize: size, includeEvents: true, clusterName: cluster.clusterName, waitTimeoutMs: wait },
      { signal, timeoutMs: waitMs + 15_000 },
    );
    // Awaited by the pull loop, unless it stops first (aborted, or an apply failed): then nobody needs the answer.
    res.catch(() => {});
    return res;
  }

  /** Pulls and applies one remote shard until signal aborts. */
  async function pull(remote: RemoteCluster, shardId: number, signal: AbortSignal, report: StreamReport): Promise<void> {
    let ack = await loadInboundAck(db, remote.name, shardId);
    const p = progressOf(remote.name, shardId);
    p.ackLevel = ack;
    // The first pull answers at once, so a (re)connection shows as connected without waiting out a long poll.
    let next = fetchPage(remote, shardId, { after: ack, acked: ack, size: pageSize, wait: 0 }, signal);
    while (!signal.aborted) {
      const res = await next;
      report.ok();
      const to = Number(res.lastTaskId);
      p.maxTaskId = Number(res.maxTaskId);
      if (to <= ack) {
        // Caught up: long-poll, which also tells the source the last applied page.
        metrics.set("replication_tasks_lag", { remote_cluster: remote.name, shard: String(shardId) }, Math.max(0, p.maxTaskId - ack));
        next = fetchPage(remote, shardId, { after: ack, acked: ack, size: pageSize, wait: waitMs }, signal);
        continue;
      }
      if (res.tasks[0]?.createTime) p.oldestUnapplied = timestampDate(res.tasks[0].createTime);
      // The next page is asked for while this one applies, so that tasks committed meanwhile are
      // here when it ends: behind, at once; caught up, as a short long poll that the next commit
      // answers. It carries the previous ack, not this page's (not applied yet): the short wait
      // bounds how long the source goes without hearing of this apply when nothing follows it
      // (the caught-up poll after it tells; a graceful failover waits for that).
      const behind = p.maxTaskId - to;
      next = fetchPage(remote, shardId, { after: to, acked: ack, size: behind > pageSize ? catchUpPageSize : pageSize, wait: behind > 0 ? 0 : prefetchWaitMs }, signal);
      await applyBatch({ remote, shardId, from: ack, to, maxTaskId: p.maxTaskId, tasks: res.tasks, signal });
      ack = p.ackLevel = to;
      const lastCreate = res.tasks.at(-1)?.createTime;
      p.oldestUnapplied = ack >= p.maxTaskId ? undefined : lastCreate ? timestampDate(lastCreate) : p.oldestUnapplied;
      metrics.set("replication_tasks_lag", { remote_cluster: remote.name, shard: String(shardId) }, Math.max(0, p.maxTaskId - ack));
    }
  }

  return {
    /** One stream per remote shard: shard counts that are multiples of each other route by hash on apply. */
    streamsFor(remote: RemoteCluster): ReplicationStream[] {
      return Array.from({ length: remote.shardCount }, (_, i) => ({
        name: `history-shard-${i + 1}`,
        run: (r: RemoteCluster, signal: AbortSignal, report: StreamReport) => pull(r, i + 1, signal, report),
      }));
    },
    /** What this process last saw of remote's shard, if it pulled it. */
    progress: (remote: string, shardId: number): InboundProgress | undefined => progress.get(`${remote}/${shardId}`),
  };
}

export type HistoryReceiver = ReturnType<typeof createHistoryReceiver>;
