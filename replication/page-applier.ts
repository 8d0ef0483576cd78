import { timestampDate } from "@bufbuild/protobuf/wkt";
import { databaseBusy, errorReason, loggableError } from "../src/errors";
import type { ReplicationTask } from "../src/gen/tern/admin/v1/service_pb";
import type { EventNotifier } from "../src/history/notifier";
import { namespaceHereUnderBarrier } from "../src/history/namespace-guard";
import type { Writer } from "../src/history/writer";
import type { Logger } from "../src/observability/log";
import type { Metrics } from "../src/observability/metrics";
import { advanceInboundAck } from "./ack-levels";
import { isTaskFailure, type HistoryApplier } from "./applier";
import type { ReplicationDlq } from "./dlq";
import { sleep } from "../src/sleep";
import type { RemoteCluster, StreamReport } from "./manager";
import { createPageTransactions, settleAll, type AckMove, type Applied } from "./page-transactions";
import type { InboundProgress } from "./receiver";
import { retryPolicy, type RetryPolicy } from "./retry-policy";

/** What the receiver's page applier needs. */
export interface PageApplierDeps {
  applier: HistoryApplier;
  /** Transactions with retries and persistence metrics. */
  writer: Pick<Writer, "transact" | "transactPipelined" | "transactOneStatement">;
  /** Woken per run after an apply commits, for history long polls on this cluster. */
  notifier: EventNotifier;
  metrics: Metrics;
  log: Logger;
  /** Where tasks that fail past the retry budget go. */
  dlq: ReplicationDlq;
  /** Retry budget of one failing task before it goes to the DLQ. */
  retry?: Partial<RetryPolicy>;
  /** The receiver's view of a remote shard, whose ack level a task-by-task apply moves. */
  progressOf: (remote: string, shardId: number) => InboundProgress;
}

export type { RetryPolicy };

const add = (into: Applied, more: Applied) => {
  into.grown.push(...more.grown);
  into.held.push(...more.held);
};

/** One pulled page, ready to apply. */
export interface Batch {
  remote: RemoteCluster;
  shardId: number;
  from: number;
  to: number;
  maxTaskId: number;
  tasks: ReplicationTask[];
  signal: AbortSignal;
  /** The pulling stream's report to the manager: told of a task retried past its budget. */
  report: StreamReport;
}

/** The move of b's shard's ack from..to by tasks (the last one's commit time is kept). */
function moveOf(b: Batch, from: number, to: number, tasks: ReplicationTask[]): AckMove {
  const lastCreate = tasks.at(-1)?.createTime;
  return { shardId: b.shardId, from, to, maxTaskId: b.maxTaskId, lastAppliedCreatedAt: lastCreate ? timestampDate(lastCreate) : undefined };
}

/**
 * Applies the pages the receiver (receiver.ts) pulled: a pull's pages in one transaction
 * that also moves their shards' inbound acks; if that fails, page by page, then task by
 * task with a retry budget each, past which a task goes to the DLQ.
 */
export function createPageApplier(deps: PageApplierDeps) {
  const { writer, metrics, log, dlq, progressOf } = deps;
  const retry = retryPolicy(deps.retry);
  const { applyAll } = createPageTransactions(deps);

  /**
   * Stores t in the DLQ in the transaction that moves the ack from..t past it, under its namespace's
   * barrier (shared), as an apply holds it: a delete of the namespace here (namespace/delete.ts) waits
   * for this and takes the entry, or came first, and the ack moves past t with no entry (there is no
   * namespace to merge it into). Before, an entry written while the delete ran was left, of no namespace.
   */
  async function deadLetter(b: Batch, t: ReplicationTask, from: number, attempts: number, e: unknown): Promise<Applied> {
    // Stored: PostgreSQL's reason only, as a merge that fails again stores it (dlq-merge.ts); a
    // row's values in the statement can be payloads. Logged: the statement too, never its parameters.
    const stored = await writer.transact("ReplicateHistoryDlq", async (tx) => {
      const here = namespaceHereUnderBarrier(tx, t.namespaceId);
      const acked = advanceInboundAck(tx, b.remote.name, b.shardId, { from, to: Number(t.taskId), maxTaskId: b.maxTaskId });
      await settleAll([here, acked]);
      if (await here) await dlq.add(tx, b.remote.name, t, attempts, errorReason(e));
      return here;
    });
    const task = { remote: b.remote.name, shard: b.shardId, taskId: Number(t.taskId), namespaceId: t.namespaceId, workflowId: t.workflowId, runId: t.runId };
    if (stored) log.error("replication task moved to the DLQ", { ...task, attempts, error: loggableError(e) });
    else log.warn("replication task failed past its retries, its namespace deleted here meanwhile: acked, not moved to the DLQ", { ...task, attempts, error: loggableError(e) });
    // Not applied either way: kept out of the applied tasks' metrics.
    return { grown: [], held: [t] };
  }

  /**
   * Applies one task with retries and backoff; past the budget it goes to the DLQ, unless this
   * cluster's database is what refuses it (databaseBusy: a timeout, a read-only or full
   * database), which is retried until it applies. Transient failures rethrow.
   */
  async function applyOne(b: Batch, t: ReplicationTask, from: number): Promise<Applied> {
    let backoff = retry.backoffMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await applyAll(b.remote, b.signal, [t], [moveOf(b, from, Number(t.taskId), [t])]);
      } catch (e) {
        failed(b, t, e, attempt);
        if (b.signal.aborted || !isTaskFailure(e)) throw e;
        if (attempt >= retry.attempts) {
          if (!databaseBusy(e)) return deadLetter(b, t, from, attempt, e);
          // Not the task's fault: retried until it applies, the stream failing (logged once) meanwhile.
          b.report.failed(e);
        }
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
    let done: Applied;
    try {
      done = await applyAll(b.remote, b.signal, b.tasks, [moveOf(b, b.from, b.to, b.tasks)]);
    } catch (batchError) {
      if (b.signal.aborted || !isTaskFailure(batchError)) throw failed(b, b.tasks[0], batchError);
      done = { grown: [], held: [] };
      let at = b.from;
      for (const t of b.tasks) {
        add(done, await applyOne(b, t, at));
        at = progressOf(b.remote.name, b.shardId).ackLevel = Number(t.taskId);
      }
      add(done, await applyAll(b.remote, b.signal, [], [moveOf(b, at, b.to, [])]));
    }
    await applied(b.remote, b.tasks, done);
  }

  /**
   * Applies the pages of one pull (one per shard) in one transaction; if that fails, page
   * by page as applyBatch applies them, so a bad task holds up neither its page's other
   * tasks nor the other shards.
   */
  async function applyPages(pages: Batch[]): Promise<void> {
    const [first] = pages;
    if (!first) return;
    // One page: applyBatch's own fallback (trying the page whole again first would be wasted).
    if (pages.length === 1) return applyBatch(first);
    const tasks = pages.flatMap((b) => b.tasks);
    let done: Applied;
    try {
      done = await applyAll(first.remote, first.signal, tasks, pages.map((b) => moveOf(b, b.from, b.to, b.tasks)));
    } catch (e) {
      if (first.signal.aborted || !isTaskFailure(e)) throw failed(first, first.tasks[0], e);
      for (const b of pages) await applyBatch(b);
      return;
    }
    await applied(first.remote, tasks, done);
  }

  /**
   * After tasks applied: the DLQ gauge, latency and count metrics of those applied (not those
   * that went to the DLQ: counted as applied, they made the lag look fine while they waited
   * there), and history long polls of the runs that grew.
   */
  async function applied(remote: RemoteCluster, tasks: ReplicationTask[], done: Applied): Promise<void> {
    const labels = { remote_cluster: remote.name };
    if (done.held.length) await dlq.refreshGauge();
    const now = Date.now();
    // A page with none held (nearly all): its tasks as they are, no set and no copy per page.
    const held = done.held.length ? new Set(done.held) : undefined;
    const landed = held ? tasks.filter((t) => !held.has(t)) : tasks;
    for (const t of landed) if (t.createTime) metrics.observe("replication_latency", labels, (now - timestampDate(t.createTime).getTime()) / 1000);
    metrics.inc("replication_tasks_applied", labels, landed.length);
    for (const runId of new Set(done.grown)) deps.notifier.notify(runId);
  }

  /**
   * Counts a failed apply and returns the error to rethrow. Logs it if it is the task's own
   * (divergence, a bad event, ...): a failure that is not (this cluster's database down, the
   * namespace not replicated yet) ends the stream, whose restarts log it once, not per retry.
   */
  function failed(b: Batch, t: ReplicationTask | undefined, e: unknown, attempt?: number): unknown {
    // The stream stopped (the server stopping): its apply was cancelled, no failure of the task.
    if (b.signal.aborted) return e;
    metrics.inc("replication_tasks_failed", { remote_cluster: b.remote.name });
    if (!isTaskFailure(e)) return e;
    // Past the budget (only a busy database retries on) the stream's report logs it.
    if (attempt !== undefined && attempt > retry.attempts) return e;
    log.warn("replication task failed; retrying", {
      remote: b.remote.name, shard: b.shardId, taskId: t ? Number(t.taskId) : undefined, workflowId: t?.workflowId, runId: t?.runId, attempt,
      error: loggableError(e),
    });
    return e;
  }

  return { applyPages };
}
