import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import type { RemoteClients } from "../src/cluster/remote-client";
import type { ReplicationTask, ShardPage } from "../src/gen/tern/admin/v1/service_pb";
import { runKeyText } from "../src/history/branch-store";
import type { EventNotifier } from "../src/history/notifier";
import type { Writer } from "../src/history/writer";
import type { Logger } from "../src/observability/log";
import type { Metrics } from "../src/observability/metrics";
import type { NamespaceRecord } from "../src/namespace/registry";
import type { Db } from "../src/persistence/database";
import { advanceInboundAck, loadInboundAck } from "./ack-levels";
import { isTaskFailure, type HistoryApplier, type IncomingTask, type RawHistoryFetcher } from "./applier";
import { HELD_BEHIND, type ReplicationDlq } from "./dlq";
import { sleep, type RemoteCluster, type ReplicationStream, type StreamReport } from "./manager";
import { mergeRunTasks } from "./task-merge";
import { versionHistoryFromProto, versionHistoryToProto } from "./version-history";

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
  /** How long a source that refused PullReplicationTasks is pulled shard by shard before the call is tried again. */
  reprobeMs?: number;
}

/** How often and how patiently a failing task is retried before it goes to the DLQ. */
export interface RetryPolicy {
  /** Attempts in all (the last failure sends the task to the DLQ). */
  attempts: number;
  backoffMs: number;
  maxBackoffMs: number;
}

/** What an apply did: runs that grew, and tasks that went to the DLQ. */
interface Applied {
  grown: string[];
  held: number;
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

/** Where an apply moves one shard's inbound ack. */
type AckMove = Parameters<typeof advanceInboundAck>[3] & { shardId: number };

/** The move of b's shard's ack from..to by tasks (the last one's commit time is kept). */
function moveOf(b: Batch, from: number, to: number, tasks: ReplicationTask[]): AckMove {
  const lastCreate = tasks.at(-1)?.createTime;
  return { shardId: b.shardId, from, to, maxTaskId: b.maxTaskId, lastAppliedCreatedAt: lastCreate ? timestampDate(lastCreate) : undefined };
}

/** Thrown inside applyPipelined when the page needs applyInFull: rolls the attempt back. */
class NeedsFullApply extends Error {}

/** Awaits every promise (none is left running), then throws the first failure. */
async function settleAll(all: Promise<unknown>[]): Promise<void> {
  const failed = (await Promise.allSettled(all)).find((r) => r.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
}

/** Tasks grouped by workflow, each group in task order. */
function byWorkflow(tasks: ReplicationTask[]): ReplicationTask[][] {
  const groups = new Map<string, ReplicationTask[]>();
  for (const t of tasks) {
    const k = `${t.namespaceId}/${t.workflowId}`;
    const g = groups.get(k);
    if (g) g.push(t);
    else groups.set(k, [t]);
  }
  return [...groups.values()];
}

/**
 * The receiving side of history replication (its counterpart is sender.ts): one stream
 * per remote pulls all its shards after their persisted inbound acks, a page of each shard
 * per call, and applies the pages of a call in one transaction that also moves their
 * acks, so restarts give no gap and no duplicate. The next pages are fetched while those
 * apply; the source is told the applied positions apart (acked_task_id), so it never
 * counts a fetched but unapplied task as acked.
 */
export function createHistoryReceiver(deps: HistoryReceiverDeps) {
  const { db, cluster, applier, writer, metrics, log, dlq } = deps;
  const retry: RetryPolicy = { attempts: 5, backoffMs: 200, maxBackoffMs: 2_000, ...deps.retry };
  const pageSize = deps.pageSize ?? 200;
  const catchUpPageSize = Math.max(pageSize, deps.catchUpPageSize ?? 1000);
  const waitMs = deps.waitMs ?? 10_000;
  const prefetchWaitMs = Math.min(waitMs, deps.prefetchWaitMs ?? 50);
  const reprobeMs = deps.reprobeMs ?? 60_000;
  const progress = new Map<string, InboundProgress>();

  /**
   * Applies tasks (of remote's shards that moves name) and makes the moves in one
   * transaction; returns the runs that grew. Tried in two round trips first
   * (applyPipelined), else in full (applyInFull).
   */
  async function applyAll(remote: RemoteCluster, signal: AbortSignal, tasks: ReplicationTask[], moves: AckMove[]): Promise<Applied> {
    const namespaces = await applier.namespacesOf(tasks);
    const labels = { remote_cluster: remote.name };
    const done = await applyPipelined(remote, tasks, namespaces, moves);
    if (done) {
      metrics.inc("replication_pages_applied", { ...labels, path: "pipelined" });
      return done;
    }
    metrics.inc("replication_pages_applied", { ...labels, path: "full" });
    return applyInFull(remote, signal, tasks, namespaces, moves);
  }

  /**
   * The usual page in two round trips (see pipelined-tx.ts): BEGIN goes out with the ack's
   * move, the shard's held runs and every run's locks and reads; COMMIT right behind the
   * writes, planned in between. Undefined, rolled back before any write, when the page needs
   * applyInFull: a held run, a run twice in the page, a divergence, a gap or a rival run.
   */
  async function applyPipelined(remote: RemoteCluster, tasks: ReplicationTask[], namespaces: Map<string, NamespaceRecord>, moves: AckMove[]): Promise<Applied | undefined> {
    // Per workflow in task order, merged per run (a page interleaves runs); a run left twice switched branches.
    const merged = byWorkflow(tasks).flatMap((g) => mergeRunTasks(g.map(incoming)));
    if (new Set(merged.map(runKeyText)).size !== merged.length) return undefined;
    try {
      return await writer.transactPipelined("ReplicateHistory", async (tx, commit) => {
        // The acks first: each moves only from where its page starts (another process may apply
        // the shard), and must fail before COMMIT goes out, not after.
        const acked = Promise.all(moves.map((m) => advanceInboundAck(tx, remote.name, m.shardId, m)));
        const held = merged.length ? dlq.heldRuns(tx, remote.name, moves.map((m) => m.shardId)) : new Set<string>();
        const reads = applier.readForApply(tx, merged.map((task) => ({ ns: namespaces.get(task.namespaceId)!, task })));
        const [heldRuns, found] = await Promise.all([held, reads, acked]);
        if (merged.some((t) => heldRuns.has(runKeyText(t)))) throw new NeedsFullApply();
        const plans = merged.map((t, i) => applier.planApply(namespaces.get(t.namespaceId)!, t, found[i]!));
        if (plans.some((p) => !p)) throw new NeedsFullApply();
        const writes = applier.writeAll(tx, plans.flatMap((p) => (p!.write ? [p!.write] : [])));
        commit();
        await writes;
        return { grown: merged.filter((_, i) => plans[i]!.events > 0).map((t) => t.runId), held: 0 };
      });
    } catch (e) {
      if (e instanceof NeedsFullApply) return undefined;
      throw e;
    }
  }

  /**
   * Applies tasks in an ordinary transaction: tasks of a run that already has a DLQ entry
   * from this shard go to the DLQ too, so the run never gets a gap (the merge re-applies
   * them in order); conflicts are resolved and gaps fetched from the source. Workflows
   * apply side by side, their statements pipelined on the transaction's connection; a
   * workflow's tasks in order.
   */
  async function applyInFull(
    remote: RemoteCluster,
    signal: AbortSignal,
    tasks: ReplicationTask[],
    namespaces: Map<string, NamespaceRecord>,
    moves: AckMove[],
  ): Promise<Applied> {
    const fetchRaw = rawFetcher(remote.name, remote.clients, log, signal);
    return writer.transact("ReplicateHistory", async (tx) => {
      const held = tasks.length ? await dlq.heldRuns(tx, remote.name, moves.map((m) => m.shardId)) : new Set<string>();
      const done: Applied = { grown: [], held: 0 };
      let failed = false;
      const apply = async (workflowTasks: ReplicationTask[]) => {
        try {
          for (const t of workflowTasks.filter((t) => held.has(runKeyText(t)))) {
            if (failed) return; // the transaction rolls back: issue nothing more on it
            await dlq.add(tx, remote.name, t, 0, HELD_BEHIND);
            done.held++;
          }
          // Held runs are held whole, so the others apply apart from them, in order, merged per run.
          for (const t of mergeRunTasks(workflowTasks.filter((t) => !held.has(runKeyText(t))).map(incoming))) {
            if (failed) return;
            if ((await applier.applyTask(tx, namespaces.get(t.namespaceId)!, t, fetchRaw)) > 0) done.grown.push(t.runId);
          }
        } catch (e) {
          failed = true;
          throw e;
        }
      };
      // Pipelined: the acks move with the apply, and a failure of any rolls back all.
      // Everything settles before the callback returns: no statement may reach the
      // connection after the rollback, when it serves another transaction.
      await settleAll([...byWorkflow(tasks).map(apply), ...moves.map((m) => advanceInboundAck(tx, remote.name, m.shardId, m))]);
      return done;
    });
  }

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
        return await applyAll(b.remote, b.signal, [t], [moveOf(b, from, Number(t.taskId), [t])]);
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
    let done: Applied;
    try {
      done = await applyAll(b.remote, b.signal, b.tasks, [moveOf(b, b.from, b.to, b.tasks)]);
    } catch (batchError) {
      if (b.signal.aborted || !isTaskFailure(batchError)) throw failed(b, b.tasks[0], batchError);
      done = { grown: [], held: 0 };
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

  /** After tasks applied: the DLQ gauge, latency and count metrics, and history long polls of the runs that grew. */
  async function applied(remote: RemoteCluster, tasks: ReplicationTask[], done: Applied): Promise<void> {
    const labels = { remote_cluster: remote.name };
    if (done.held) await dlq.refreshGauge([remote.name]);
    const now = Date.now();
    for (const t of tasks) if (t.createTime) metrics.observe("replication_latency", labels, (now - timestampDate(t.createTime).getTime()) / 1000);
    metrics.inc("replication_tasks_applied", labels, tasks.length - done.held);
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

  type Cursor = { shardId: number; after: number; acked: number };
  type Pulled = { shards: Pick<ShardPage, "shardId" | "tasks" | "maxTaskId" | "lastTaskId">[] };

  /** A page of each of remote's shards after its cursor; the source records each `acked` as applied here. */
  function fetchPages(remote: RemoteCluster, cursors: Cursor[], page: { size: number; wait: number }, signal: AbortSignal): Promise<Pulled> {
    return remote.clients.admin.pullReplicationTasks(
      {
        clusterName: cluster.clusterName,
        shards: cursors.map((c) => ({ shardId: c.shardId, afterTaskId: BigInt(c.after), ackedTaskId: BigInt(c.acked) })),
        pageSize: page.size,
        waitTimeoutMs: page.wait,
      },
      { signal, timeoutMs: waitMs + 15_000 },
    );
  }

  /**
   * fetchPages from a source that lacks PullReplicationTasks (a tern from before it): each
   * shard's GetReplicationTasks side by side, answered with the first page that has tasks
   * (and any others in by then) or, with none, once all have answered; the rest are dropped,
   * their shards answered empty at their cursors (asked again next time).
   */
  async function fetchShardByShard(remote: RemoteCluster, cursors: Cursor[], page: { size: number; wait: number }, signal: AbortSignal): Promise<Pulled> {
    const stop = new AbortController();
    const s = AbortSignal.any([signal, stop.signal]);
    const got = new Map<number, Pulled["shards"][number]>();
    const calls = cursors.map((c) =>
      remote.clients.admin
        .getReplicationTasks(
          {
            shardId: c.shardId, afterTaskId: BigInt(c.after), ackedTaskId: BigInt(c.acked), pageSize: page.size, includeEvents: true,
            clusterName: cluster.clusterName, waitTimeoutMs: page.wait,
          },
          { signal: s, timeoutMs: waitMs + 15_000 },
        )
        .then((res) => {
          got.set(c.shardId, { shardId: c.shardId, tasks: res.tasks, maxTaskId: res.maxTaskId, lastTaskId: res.lastTaskId });
          if (res.tasks.length) stop.abort();
        }),
    );
    try {
      await Promise.all(calls.map((p) => p.catch((e) => (stop.signal.aborted && !signal.aborted ? undefined : Promise.reject(e)))));
    } finally {
      stop.abort();
    }
    // A dropped shard keeps the max task id last heard of, so its lag still shows.
    const unanswered = (c: Cursor) => ({
      shardId: c.shardId, tasks: [], maxTaskId: BigInt(Math.max(c.after, progressOf(remote.name, c.shardId).maxTaskId)), lastTaskId: BigInt(c.after),
    });
    return { shards: cursors.map((c) => got.get(c.shardId) ?? unanswered(c)) };
  }

  /** Pulls and applies all of remote's shards until signal aborts. */
  async function pull(remote: RemoteCluster, signal: AbortSignal, report: StreamReport): Promise<void> {
    const shardIds = Array.from({ length: remote.shardCount }, (_, i) => i + 1);
    const acks = new Map(await Promise.all(shardIds.map(async (id) => [id, await loadInboundAck(db, remote.name, id)] as const)));
    for (const [id, ack] of acks) progressOf(remote.name, id).ackLevel = ack;
    const lag = (shardId: number, p: InboundProgress) =>
      metrics.set("replication_tasks_lag", { remote_cluster: remote.name, shard: String(shardId) }, Math.max(0, p.maxTaskId - p.ackLevel));
    const cursors = (after: Map<number, number>): Cursor[] => shardIds.map((id) => ({ shardId: id, after: after.get(id)!, acked: acks.get(id)! }));
    // When the source last refused PullReplicationTasks (a tern before it): until reprobeMs
    // later, its shards are pulled one call each; then the call is tried again, so a source
    // upgraded without this stream noticing a restart is pulled in one call again.
    let refusedAt: number | undefined;
    const fetch = async (cs: Cursor[], page: { size: number; wait: number }): Promise<Pulled> => {
      if (refusedAt !== undefined && performance.now() - refusedAt < reprobeMs) return fetchShardByShard(remote, cs, page, signal);
      try {
        const res = await fetchPages(remote, cs, page, signal);
        if (refusedAt !== undefined) log.info("remote cluster serves PullReplicationTasks now; pulling all its shards in one call", { remote: remote.name });
        refusedAt = undefined;
        return res;
      } catch (e) {
        if (ConnectError.from(e).code !== Code.Unimplemented) throw e;
        if (refusedAt === undefined) {
          log.warn("remote cluster does not serve PullReplicationTasks (a tern before it); pulling its shards one call each", { remote: remote.name });
        }
        refusedAt = performance.now();
        return fetchShardByShard(remote, cs, page, signal);
      }
    };
    const ask = (after: Map<number, number>, page: { size: number; wait: number }) => {
      const res = fetch(cursors(after), page).then((pulled) => ({ ...pulled, arrivedAt: Date.now() }));
      // Awaited by the loop, unless it stops first (aborted, or an apply failed): then nobody needs the answer.
      res.catch(() => {});
      return res;
    };
    // The first pull answers at once, so a (re)connection shows as connected without waiting out a long poll.
    let next = ask(acks, { size: pageSize, wait: 0 });
    const labels = { remote_cluster: remote.name };
    while (!signal.aborted) {
      const res = await next;
      report.ok();
      for (const sp of res.shards) {
        for (const t of sp.tasks) if (t.createTime) metrics.observe("replication_fetch_latency", labels, (res.arrivedAt - timestampDate(t.createTime).getTime()) / 1000);
      }
      const pages: Batch[] = [];
      const after = new Map(acks);
      let behind = 0;
      for (const sp of res.shards) {
        const ack = acks.get(sp.shardId);
        if (ack === undefined) throw new Error(`remote ${remote.name} answered for shard ${sp.shardId}, which was not asked for`);
        const p = progressOf(remote.name, sp.shardId);
        const to = Number(sp.lastTaskId);
        p.maxTaskId = Number(sp.maxTaskId);
        if (to <= ack) {
          lag(sp.shardId, p);
          continue;
        }
        if (sp.tasks[0]?.createTime) p.oldestUnapplied = timestampDate(sp.tasks[0].createTime);
        pages.push({ remote, shardId: sp.shardId, from: ack, to, maxTaskId: p.maxTaskId, tasks: sp.tasks, signal });
        after.set(sp.shardId, to);
        behind = Math.max(behind, p.maxTaskId - to);
      }
      if (!pages.length) {
        // Caught up: long-poll, which also tells the source the last applied pages.
        next = ask(acks, { size: pageSize, wait: waitMs });
        continue;
      }
      // The next pages are asked for while these apply, so that tasks committed meanwhile are
      // here when they end: behind, at once; caught up, as a short long poll that the next commit
      // answers. It carries the previous acks, not these pages' (not applied yet): the short wait
      // bounds how long the source goes without hearing of this apply when nothing follows it
      // (the caught-up poll after it tells; a graceful failover waits for that).
      next = ask(after, { size: behind > pageSize ? catchUpPageSize : pageSize, wait: behind > 0 ? 0 : prefetchWaitMs });
      await applyPages(pages);
      const applyS = (Date.now() - res.arrivedAt) / 1000;
      for (const b of pages) for (let i = 0; i < b.tasks.length; i++) metrics.observe("replication_apply_latency", labels, applyS);
      for (const b of pages) {
        const p = progressOf(remote.name, b.shardId);
        acks.set(b.shardId, (p.ackLevel = b.to));
        const lastCreate = b.tasks.at(-1)?.createTime;
        p.oldestUnapplied = b.to >= p.maxTaskId ? undefined : lastCreate ? timestampDate(lastCreate) : p.oldestUnapplied;
        lag(b.shardId, p);
      }
    }
  }

  return {
    /** One stream per remote, for all its shards: shard counts that are multiples of each other route by hash on apply. */
    streamsFor(_remote: RemoteCluster): ReplicationStream[] {
      return [{ name: "history", run: pull }];
    },
    /** What this process last saw of remote's shard, if it pulled it. */
    progress: (remote: string, shardId: number): InboundProgress | undefined => progress.get(`${remote}/${shardId}`),
  };
}

export type HistoryReceiver = ReturnType<typeof createHistoryReceiver>;

/** Gap repair (and DLQ merge) through the source's GetWorkflowExecutionRawHistory. */
export function rawFetcher(source: string, clients: RemoteClients, log: Logger, signal?: AbortSignal): RawHistoryFetcher {
  return async (task, first, next) => {
    log.info("repairing history gap from source", { remote: source, workflowId: task.workflowId, runId: task.runId, first, next });
    const res = await clients.admin.getWorkflowExecutionRawHistory(
      {
        namespaceId: task.namespaceId, workflowId: task.workflowId, runId: task.runId, firstEventId: BigInt(first), nextEventId: BigInt(next),
        // The task's branch, which need not be the source's current one any more.
        versionHistory: versionHistoryToProto(task.versionHistory),
      },
      { signal, timeoutMs: 30_000 },
    );
    if (res.events.length !== next - first || Number(res.events[0]?.eventId) !== first) {
      throw new Error(`source ${source} returned ${res.events.length} events for ${task.workflowId} run ${task.runId} [${first}, ${next})`);
    }
    return res.events;
  };
}

/** The applier's form of a task. */
export function incoming(t: ReplicationTask): IncomingTask {
  return {
    namespaceId: t.namespaceId,
    workflowId: t.workflowId,
    runId: t.runId,
    firstEventId: Number(t.firstEventId),
    nextEventId: Number(t.nextEventId),
    versionHistory: versionHistoryFromProto(t.versionHistory?.items),
    events: t.events,
  };
}
