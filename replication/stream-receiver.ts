import type { ShardPage } from "../src/gen/tern/admin/v1/service_pb";
import { remoteFailureText } from "../src/cluster/remote-client";
import { nextTurn } from "../src/next-turn";
import { createAckSender } from "./ack-sender";
import { AppliesLostError } from "./apply-errors";
import { OVERDUE_SLACK_MS } from "./inbound-heard";
import type { RemoteCluster, StreamReport } from "./manager";
import { notServed } from "./not-served";
import { estimateEventBytes } from "./outbox-tail";
import { ANSWER_BYTES, MAX_SHARD_PAGE, PULL_BUDGET, shardPageSizes } from "./pull-budget";
import type { ReceiverPathDeps } from "./receiver";

/**
 * The receiver's stream path (receiver.ts runs it; its counterpart is sender.ts's
 * StreamReplicationTasks): one open call per remote for all its shards.
 */
export function createStreamReceiver(deps: ReceiverPathDeps) {
  const { cluster, metrics, log, pageSize, catchUpPageSize, waitMs, ackIntervalMs, silenceGraceMs, streamRefusedAt, hear, unheard, inbound, repairCleaned, joinPages, applied, applyPages } = deps;


  /**
   * Applies remote's tasks from one StreamReplicationTasks call, what came during an apply
   * applied together (up to PULL_BUDGET tasks), until signal aborts; "refused" when the source
   * said it does not serve the call (notServed) before anything else. The applied positions go back by
   * AckReplicationTasks (ack-sender.ts), and as the next call's cursors. A call silent for waitMs
   * and silenceGraceMs more (the source answers at least every waitMs) is given up.
   */
  async function stream(remote: RemoteCluster, signal: AbortSignal, report: StreamReport): Promise<"refused" | undefined> {
    const { shardIds, acks, lag, durable } = await inbound(remote);
    const local = new AbortController();
    const s = AbortSignal.any([signal, local.signal]);
    // Set when the database restarted since the stream's applies: it ends, and the next starts from the acks the database holds.
    let lost: AppliesLostError | undefined;
    const labels = { remote_cluster: remote.name };
    // A stream's pages go as fast as this side reads them, and a page holds what is there: every
    // shard asks a catch-up page (PULL_BUDGET shared among them), whatever its backlog now.
    const sizes = shardPageSizes(shardIds.map(() => Number.POSITIVE_INFINITY), pageSize, catchUpPageSize);
    const positions = shardIds.map((id) => BigInt(acks.get(id)!));
    const call = remote.clients.admin.streamReplicationTasks(
      { clusterName: cluster.clusterName, cursors: { shardIds, afterTaskIds: positions, ackedTaskIds: positions, pageSizes: sizes }, waitTimeoutMs: waitMs, readsCleanedThrough: true },
      { signal: s },
    );

    // What came and is not applied yet, with when it came; the reader stops reading (so the
    // source stops sending) while a shard page's worth waits, or an answer's bytes: behind, one
    // answer read ahead of the apply, as a pull had (reading on to a budget's worth held 40-60
    // MB more in catch-up; reading on to 1,000 tasks of large payloads, gigabytes).
    const queue: { shards: ShardPage[]; tasks: number; bytes: number; arrivedAt: number }[] = [];
    let queued = 0;
    let queuedBytes = 0;
    let heard = false;
    let ended: { error?: unknown } | undefined;
    let wakeApplier: (() => void) | undefined;
    let wakeReader: (() => void) | undefined;
    const wakeBoth = () => (wakeApplier?.(), wakeReader?.());
    s.addEventListener("abort", wakeBoth, { once: true });
    // What the stream's state says until it ends, whatever the applies meanwhile: acks the source
    // does not take (it hears of no apply; its cleanup and graceful failovers wait), and a source
    // that owes a message (one comes at least every waitMs) and sent none.
    let ackFailure: Error | undefined;
    let overdue: Error | undefined;
    const settled = () => {
      const trouble = ackFailure ?? overdue;
      if (trouble) report.failed(trouble);
      else report.ok();
    };
    // Overdue a little past the wait: the source's message after it may take a read of its database.
    const overdueMs = waitMs + Math.min(silenceGraceMs, OVERDUE_SLACK_MS);
    const silentMs = waitMs + silenceGraceMs;
    let lastHeard = performance.now();
    const watch = () => {
      const quiet = performance.now() - lastHeard;
      if (quiet >= silentMs) return local.abort(new Error(`cluster ${remote.name} sent nothing on its replication stream for ${silentMs} ms`));
      // Only a stream that was heard: one never heard keeps the state it opened with (connecting, or the last call's error).
      if (quiet >= overdueMs && heard && !overdue) {
        report.failed((overdue = new Error(`cluster ${remote.name} has sent nothing on its replication stream for ${overdueMs} ms (it sends at least every ${waitMs} ms)`)));
      }
      watchdog = setTimeout(watch, lastHeard + (quiet < overdueMs ? overdueMs : silentMs) - performance.now());
    };
    let watchdog = setTimeout(watch, overdueMs);
    const reading = (async () => {
      try {
        for await (const res of call) {
          if (!heard && streamRefusedAt.delete(remote.name)) log.info("remote cluster serves StreamReplicationTasks now; taking its tasks on one stream", { remote: remote.name });
          heard = true;
          lastHeard = performance.now();
          hear(remote.name);
          overdue = undefined;
          let tasks = 0;
          let bytes = 0;
          for (const sp of res.shards) {
            tasks += sp.tasks.length;
            for (const t of sp.tasks) bytes += estimateEventBytes(t.events);
          }
          queue.push({ shards: res.shards, tasks, bytes, arrivedAt: Date.now() });
          queued += tasks;
          queuedBytes += bytes;
          metrics.set("replication_stream_received_tasks", labels, queued);
          wakeApplier?.();
          while ((queued >= MAX_SHARD_PAGE || queuedBytes >= ANSWER_BYTES) && !s.aborted) await new Promise<void>((r) => (wakeReader = r));
        }
        ended = { error: s.aborted ? undefined : new Error(`cluster ${remote.name} ended its replication stream`) };
      } catch (e) {
        ended = { error: e };
      }
      wakeApplier?.();
    })();

    const acker = createAckSender({
      remote, clusterName: cluster.clusterName, shardIds, acks, signal: s, durable, ackIntervalMs,
      // An ack the source does not answer within the grace a silent stream gets is given up too.
      timeoutMs: silenceGraceMs,
      failed: (e, ownDatabase) => {
        if (e instanceof AppliesLostError) return void (lost ??= e, local.abort(e));
        // This cluster's database lost read as the source's fault ("acks to cluster A failed: read ECONNRESET").
        const what = ownDatabase ? `this cluster's database could not make the applies durable, so cluster ${remote.name} is not told of them` : `acks to cluster ${remote.name} failed, so it does not hear what was applied`;
        report.failed((ackFailure = new Error(`${what}: ${remoteFailureText(remote.name, e)}`)));
      },
      sent: () => {
        if (!ackFailure) return;
        ackFailure = undefined;
        settled();
      },
    });

    try {
      while (!signal.aborted) {
        if (!queue.length) {
          if (ended) break;
          await new Promise<void>((r) => (wakeApplier = r));
          wakeApplier = undefined;
          // The other messages read in the same chunk join this apply.
          await nextTurn();
          continue;
        }
        let n = 0;
        let take = 0;
        while (n < queue.length && (n === 0 || take + queue[n]!.tasks <= PULL_BUDGET)) take += queue[n++]!.tasks;
        const got = queue.splice(0, n);
        queued -= take;
        for (const g of got) queuedBytes -= g.bytes;
        metrics.set("replication_stream_received_tasks", labels, queued);
        wakeReader?.();
        wakeReader = undefined;
        await repairCleaned(remote, got, acks);
        const batches = joinPages(remote, got, acks, lag, signal, report);
        if (batches.length) await applyPages(batches);
        // After the apply: a stream whose every apply fails (this cluster's database down) is failing.
        settled();
        if (!batches.length) continue;
        const now = Date.now();
        for (const { tasks, arrivedAt } of got) for (let i = 0; i < tasks; i++) metrics.observe("replication_apply_latency", labels, (now - arrivedAt) / 1000);
        applied(remote, batches, acks, lag);
        acker.schedule();
      }
    } finally {
      local.abort();
      clearTimeout(watchdog);
      acker.stop();
      s.removeEventListener("abort", wakeBoth);
      await reading;
      metrics.set("replication_stream_received_tasks", labels, 0);
    }
    const error = lost ?? ended?.error;
    if (signal.aborted || !error) return undefined;
    if (!heard && notServed(error)) return "refused";
    // The call failed (refused, reset, ended, silent): the source's lag is unknown from now on.
    if (error !== lost) unheard(remote.name, error);
    throw error;
  }

  return { stream };
}
