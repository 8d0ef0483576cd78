import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import type { Logger } from "../src/observability/log";
import type { Metrics } from "../src/observability/metrics";
import type { Db } from "../src/persistence/database";
import { advanceInboundAck, loadInboundAcks } from "./ack-levels";
import { startBackfillsFrom } from "./backfill-jobs";
import { transaction } from "../src/persistence/call-signal";
import { AppliesLostError } from "./apply-errors";
import { createInboundHeard, OVERDUE_SLACK_MS, type Heard } from "./inbound-heard";
import type { RemoteCluster, ReplicationStream, StreamReport } from "./manager";
import { createPageApplier, type Batch, type PageApplierDeps } from "./page-applier";
import { createPullReceiver, type Pulled } from "./pull-receiver";
import { createStreamReceiver } from "./stream-receiver";
import { tasksBehind } from "./outbound-lag";

export interface HistoryReceiverDeps extends Omit<PageApplierDeps, "progressOf"> {
  db: Db;
  cluster: CurrentCluster;
  pageSize?: number;
  /** Page size while more than a page behind (the source caps it at 1000). */
  catchUpPageSize?: number;
  /** Long-poll wait asked of the source. */
  waitMs?: number;
  /** Wait asked of the source for the page after one being applied (see pull). */
  prefetchWaitMs?: number;
  /** How long a source that refused StreamReplicationTasks (or PullReplicationTasks) is pulled the older way before the call is tried again. */
  reprobeMs?: number;
  /** Least time between two AckReplicationTasks calls of a stream (what was applied meanwhile goes in the next). */
  ackIntervalMs?: number;
  /** How long past waitMs a stream may stay silent (the source sends at least every waitMs) before it is given up. */
  silenceGraceMs?: number;
  /**
   * Makes every apply committed so far durable (on PostgreSQL the applies commit without
   * waiting for their WAL flush: database.ts). Awaited before a source is told what was applied,
   * since it may then drop those tasks. Unset: an apply is durable once committed. Resolves to
   * what names the database's run (database.ts: PostgreSQL's start time and its statistics' last
   * discard), which a restart changes.
   */
  durable?: () => Promise<unknown>;
  /** Wakes the backfill receiver: a repair of tasks the source cleaned started jobs (repairCleaned). */
  onBackfillStarted?: () => void;
  now?: () => Date;
}

/** What this process last saw of one remote shard, for status (not persisted). */
export interface InboundProgress {
  maxTaskId: number;
  ackLevel: number;
  /**
   * The id before the first the source sent from the ack: its page's first task less one, or the
   * page's end with no task. The ids from the ack through it are not in its queue (cleaned before
   * this cluster was added) or not for this cluster, and are never sent here.
   */
  sentAfter?: number;
  /** Commit time on the source of the oldest task known to be unapplied. */
  oldestUnapplied?: Date;
}

/**
 * How many tasks of a shard the source will still send here: its max task id less the later of
 * the ack and sentAfter. Not max less the ack: a source whose queue was cleaned before this cluster
 * was added sends from past the hole, and the receiver read behind by every task the shard ever
 * had until its first page applied. As the source's replication_outbound_tasks_lag (outbound-lag.ts).
 */
export function inboundTasksBehind(p: Pick<InboundProgress, "maxTaskId" | "ackLevel" | "sentAfter">): number {
  return tasksBehind(p.maxTaskId, p.ackLevel, (p.sentAfter ?? 0) + 1);
}

/**
 * How long a shard's oldest task known unapplied here has waited since its commit on the source, in
 * ms (0 with none unapplied): since is when to count from, its oldestUnapplied or what stands for it.
 */
export function inboundLagMs(p: Pick<InboundProgress, "maxTaskId" | "ackLevel" | "sentAfter">, since: Date | undefined, now: number): number {
  return inboundTasksBehind(p) > 0 && since ? Math.max(0, now - since.getTime()) : 0;
}

/** A shard's lag gauge setter (inbound): set when the shard's lag changed. */
export type Lag = (shardId: number, p: InboundProgress) => void;

/**
 * What the receiver's two paths (stream-receiver.ts, pull-receiver.ts) share: its settings with
 * their defaults, and the inbound state and steps both take a remote's tasks through.
 */
export interface ReceiverPathDeps {
  cluster: CurrentCluster;
  metrics: Metrics;
  log: Logger;
  pageSize: number;
  catchUpPageSize: number;
  waitMs: number;
  prefetchWaitMs: number;
  reprobeMs: number;
  ackIntervalMs: number;
  silenceGraceMs: number;
  /** When each remote last refused StreamReplicationTasks (a tern before it). */
  streamRefusedAt: Map<string, number>;
  /** Notes that remote was heard now, and returns the time. */
  hear: (remote: string) => number;
  /** Notes that a call to remote failed (not this side's own abort): its lag is unknown until it answers again. */
  unheard: (remote: string, error: unknown) => void;
  progressOf: (remote: string, shardId: number) => InboundProgress;
  inbound: (remote: RemoteCluster) => Promise<{ shardIds: number[]; acks: Map<number, number>; lag: Lag; durable: () => Promise<void> }>;
  applied: (remote: RemoteCluster, pages: Batch[], acks: Map<number, number>, lag: Lag) => void;
  repairCleaned: (remote: RemoteCluster, answers: readonly { shards: Pulled["shards"] }[], acks: Map<number, number>) => Promise<void>;
  joinPages: (
    remote: RemoteCluster,
    answers: readonly { shards: Pulled["shards"]; arrivedAt: number }[],
    acks: ReadonlyMap<number, number>,
    lag: Lag,
    signal: AbortSignal,
    report: StreamReport,
  ) => Batch[];
  applyPages: ReturnType<typeof createPageApplier>["applyPages"];
}

/**
 * The receiving side of history replication (its counterpart is sender.ts): one stream
 * per remote takes all its shards after their persisted inbound acks, on one open
 * StreamReplicationTasks call (or, from a source before it, a PullReplicationTasks call per
 * page of each shard), and applies what came in one transaction that also moves their acks,
 * so restarts give no gap and no duplicate. The next pages come while those apply; the source
 * is told the applied positions apart (AckReplicationTasks, or a pull's acked_task_id), so it
 * never counts a fetched but unapplied task as acked.
 */
export function createHistoryReceiver(deps: HistoryReceiverDeps) {
  const { db, cluster, metrics, log } = deps;
  const pageSize = deps.pageSize ?? 200;
  const catchUpPageSize = Math.max(pageSize, deps.catchUpPageSize ?? 1000);
  const waitMs = deps.waitMs ?? 10_000;
  const prefetchWaitMs = Math.min(waitMs, deps.prefetchWaitMs ?? 50);
  const reprobeMs = deps.reprobeMs ?? 60_000;
  const ackIntervalMs = deps.ackIntervalMs ?? 50;
  // A silent stream is given up 3 s after its state says the source is overdue (OVERDUE_SLACK_MS),
  // not 13 s after: with 15 s, 25 s of a black-holed link passed before the stream was opened again.
  const silenceGraceMs = deps.silenceGraceMs ?? 5_000;
  const durable = deps.durable ?? (() => Promise.resolve());
  /** When each remote last refused StreamReplicationTasks (terns before it); pull-receiver.ts keeps PullReplicationTasks's. */
  const streamRefusedAt = new Map<string, number>();
  /** Per remote, per shard id (no key string to build for each of hundreds of shards per pull). */
  const progress = new Map<string, Map<number, InboundProgress>>();
  /**
   * When each remote's last stream message or pull answer came: what progress knows of its tasks is
   * as of then. Stale as soon as a call fails (staleAfterMs 0): the source may write what is not seen
   * here from then on. Before, a source refusing connections was unknown only once overdue, 12 s after
   * it was last heard by default.
   */
  const inboundHeard = createInboundHeard({ everyMs: waitMs, staleAfterMs: 0 });
  const hear = (remote: string) => {
    inboundHeard.heard(remote);
    return Date.now();
  };

  function progressOf(remote: string, shardId: number): InboundProgress {
    let shards = progress.get(remote);
    if (!shards) progress.set(remote, (shards = new Map()));
    let p = shards.get(shardId);
    if (!p) shards.set(shardId, (p = { maxTaskId: 0, ackLevel: 0 }));
    return p;
  }

  const { applyPages } = createPageApplier({ ...deps, progressOf });

  /**
   * remote's shard ids, their persisted inbound acks (also set as progress), a setter of each
   * shard's lag gauge, and `durable` for the stream's applies. The applies are made durable
   * first: the acks read may be the last stream's applies, committed without their flush, and
   * the first request tells them to the source. The stream's `durable` fails once the database
   * restarted since (AppliesLostError): a flush on the restarted PostgreSQL went through, and the
   * source was told of applies the restart took, which this side then never took again.
   */
  async function inbound(remote: RemoteCluster) {
    const shardIds = Array.from({ length: remote.shardCount }, (_, i) => i + 1);
    const run = await durable();
    const acks = await loadInboundAcks(db, remote.name, shardIds);
    const durableSince = async () => {
      const now = await durable();
      if (now !== run) throw new AppliesLostError(`this cluster's database restarted since the stream began (its run is ${String(now)}, was ${String(run)}): the applies it had not flushed are gone; taking cluster ${remote.name}'s tasks again from the acks it holds`);
    };
    for (const [id, ack] of acks) progressOf(remote.name, id).ackLevel = ack;
    // The lag gauge of each shard, set when it changes (an answer for 512 shards mostly changes none).
    const shown = new Map<number, number>();
    const lag = (shardId: number, p: InboundProgress) => {
      const value = inboundTasksBehind(p);
      if (shown.get(shardId) === value) return;
      shown.set(shardId, value);
      metrics.set("replication_tasks_lag", { remote_cluster: remote.name, shard: String(shardId) }, value);
    };
    // Every shard has its series, not only those the source has answered for: one it never had a task in lags 0.
    for (const id of shardIds) lag(id, progressOf(remote.name, id));
    return { shardIds, acks, lag, durable: durableSince };
  }

  /** After an apply: each page's shard acked to its end, its progress and lag gauge to match. */
  function applied(remote: RemoteCluster, pages: Batch[], acks: Map<number, number>, lag: (shardId: number, p: InboundProgress) => void): void {
    for (const b of pages) {
      const p = progressOf(remote.name, b.shardId);
      acks.set(b.shardId, (p.ackLevel = b.to));
      const lastCreate = b.tasks.at(-1)?.createTime;
      p.oldestUnapplied = b.to >= p.maxTaskId ? undefined : lastCreate ? timestampDate(lastCreate) : p.oldestUnapplied;
      lag(b.shardId, p);
    }
  }

  /**
   * The pages of the answers (in the order they came) as one page per shard, from its applied
   * position in acks: a shard's pages joined, each starting where the one before it ended, and a
   * shard with nothing past that left out. Each shard's max task id, lag gauge and oldest
   * unapplied task are updated as heard, each task's fetch latency observed.
   */
  function joinPages(
    remote: RemoteCluster,
    answers: readonly { shards: Pulled["shards"]; arrivedAt: number }[],
    acks: ReadonlyMap<number, number>,
    lag: (shardId: number, p: InboundProgress) => void,
    signal: AbortSignal,
    report: StreamReport,
  ): Batch[] {
    const labels = { remote_cluster: remote.name };
    const pages = new Map<number, Batch>();
    for (const { shards, arrivedAt } of answers) {
      for (const sp of shards) {
        const ack = acks.get(sp.shardId);
        if (ack === undefined) throw new Error(`remote ${remote.name} answered for shard ${sp.shardId}, which was not asked for`);
        for (const t of sp.tasks) if (t.createTime) metrics.observe("replication_fetch_latency", labels, (arrivedAt - timestampDate(t.createTime).getTime()) / 1000);
        const p = progressOf(remote.name, sp.shardId);
        p.maxTaskId = Number(sp.maxTaskId);
        const page = pages.get(sp.shardId);
        const to = Number(sp.lastTaskId);
        if (to <= (page ? page.to : ack)) {
          lag(sp.shardId, p);
          continue;
        }
        if (page) {
          page.to = to;
          page.maxTaskId = p.maxTaskId;
          page.tasks = page.tasks.concat(sp.tasks);
          continue;
        }
        if (sp.tasks[0]?.createTime) p.oldestUnapplied = timestampDate(sp.tasks[0].createTime);
        // A page from the ack: what it passed over is not to come (inboundTasksBehind), shown while it applies.
        p.sentAfter = sp.tasks.length ? Number(sp.tasks[0]!.taskId) - 1 : to;
        lag(sp.shardId, p);
        pages.set(sp.shardId, { remote, shardId: sp.shardId, from: ack, to, maxTaskId: p.maxTaskId, tasks: sp.tasks, signal, report });
      }
    }
    return [...pages.values()];
  }

  /**
   * Shard pages whose cleaned_through is past this side's ack: the source deleted tasks this side
   * never applied (it was disabled past the source's grace, cleanup.ts). One transaction starts a
   * backfill from the source of every global namespace both list (applied runs are skipped, shorter
   * ones extended: backfill-receiver.ts) and moves those shards' acks to it, so a crash loses
   * neither: before it commits the source says it again, after it the jobs run.
   */
  async function repairCleaned(remote: RemoteCluster, answers: readonly { shards: Pulled["shards"] }[], acks: Map<number, number>): Promise<void> {
    const moves = new Map<number, { from: number; to: number; maxTaskId: number }>();
    // Each answer as it came, as joinPages takes them: no array of every shard made per batch for marks seldom there.
    for (const { shards } of answers) for (const sp of shards) {
      const from = acks.get(sp.shardId);
      const to = Number(sp.cleanedThroughTaskId ?? 0);
      if (from !== undefined && to > Math.max(from, moves.get(sp.shardId)?.to ?? 0)) moves.set(sp.shardId, { from, to, maxTaskId: Number(sp.maxTaskId) });
    }
    if (!moves.size) return;
    await transaction(db, async (tx) => {
      await startBackfillsFrom(tx, remote.name, cluster.clusterName, (deps.now ?? (() => new Date()))());
      for (const [shardId, move] of moves) await advanceInboundAck(tx, remote.name, shardId, move);
    });
    for (const [shardId, { to }] of moves) acks.set(shardId, (progressOf(remote.name, shardId).ackLevel = to));
    log.warn("the source deleted replication tasks this cluster had not applied (it was disabled past the source's grace); backfilling its namespaces from it", {
      remote: remote.name, shards: [...moves.keys()].slice(0, 20), count: moves.size,
    });
    deps.onBackfillStarted?.();
  }

  const paths: ReceiverPathDeps = {
    cluster, metrics, log, pageSize, catchUpPageSize, waitMs, prefetchWaitMs, reprobeMs, ackIntervalMs, silenceGraceMs,
    streamRefusedAt, hear, unheard: inboundHeard.failed, progressOf, inbound, applied, repairCleaned, joinPages, applyPages,
  };
  const { stream } = createStreamReceiver(paths);
  const { pull } = createPullReceiver(paths);

  /**
   * Takes remote's tasks from a StreamReplicationTasks call until signal aborts; from a source
   * that refuses the call (a tern before it), by PullReplicationTasks until reprobeMs after the
   * refusal, when the stream is tried again.
   */
  async function run(remote: RemoteCluster, signal: AbortSignal, report: StreamReport): Promise<void> {
    const refused = streamRefusedAt.get(remote.name);
    if (refused === undefined || performance.now() - refused >= reprobeMs) {
      if ((await stream(remote, signal, report)) !== "refused") return;
      if (refused === undefined) log.warn("remote cluster does not serve StreamReplicationTasks (a tern before it); pulling its tasks a call at a time", { remote: remote.name });
      streamRefusedAt.set(remote.name, performance.now());
    }
    await pull(remote, signal, report, streamRefusedAt.get(remote.name)! + reprobeMs);
  }

  return {
    /** One stream per remote, for all its shards: shard counts that are multiples of each other route by hash on apply. */
    streamsFor(_remote: RemoteCluster): ReplicationStream[] {
      return [{ name: "history", run }];
    },
    /** What this process last saw of remote's shard, if it pulled it. */
    progress: (remote: string, shardId: number): InboundProgress | undefined => progress.get(remote)?.get(shardId),
    /** The longest inboundLagMs of remote's shards as this process saw them; undefined before it took any. */
    lagMs(remote: string, now = Date.now()): number | undefined {
      const shards = progress.get(remote);
      if (!shards) return undefined;
      let most = 0;
      for (const p of shards.values()) most = Math.max(most, inboundLagMs(p, p.oldestUnapplied, now));
      return most;
    },
    /**
     * When this process last heard from remote, and whether that is longer ago than the source
     * goes between messages and its slack (the stream's state says it is overdue then): its
     * tasks since are not seen, so the inbound lag is unknown.
     */
    heard: (remote: string): Heard => inboundHeard.of(remote),
    /** How long unheard before a remote's inbound lag is unknown (its source overdue): namespace replication's polls may fail that long. */
    staleAfterMs: waitMs + OVERDUE_SLACK_MS,
  };
}

export type HistoryReceiver = ReturnType<typeof createHistoryReceiver>;
