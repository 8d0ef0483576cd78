import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import type { ShardPage } from "../src/gen/tern/admin/v1/service_pb";
import type { Db } from "../src/persistence/database";
import { loggableError } from "../src/errors";
import { fetchFailureReason } from "../src/fetch-failure";
import { nextTurn } from "../src/next-turn";
import { loadInboundAck } from "./ack-levels";
import { createAckSender } from "./ack-sender";
import { AppliesLostError } from "./apply-errors";
import { createInboundHeard, OVERDUE_SLACK_MS, type Heard } from "./inbound-heard";
import { notServed } from "./not-served";
import { estimateEventBytes } from "./outbox-tail";
import type { RemoteCluster, ReplicationStream, StreamReport } from "./manager";
import { createPageApplier, type Batch, type PageApplierDeps } from "./page-applier";
import { ANSWER_BYTES, FIRST_STREAM_PAGE, MAX_SHARD_PAGE, nextStreamPage, PULL_BUDGET, shardPageSizes } from "./pull-budget";

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
}

/** What this process last saw of one remote shard, for status (not persisted). */
export interface InboundProgress {
  maxTaskId: number;
  ackLevel: number;
  /** Commit time on the source of the oldest task known to be unapplied. */
  oldestUnapplied?: Date;
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
  /** When each remote last refused StreamReplicationTasks, and PullReplicationTasks (terns before them). */
  const streamRefusedAt = new Map<string, number>();
  const pullRefusedAt = new Map<string, number>();
  /** Per remote, per shard id (no key string to build for each of hundreds of shards per pull). */
  const progress = new Map<string, Map<number, InboundProgress>>();
  /** When each remote's last stream message or pull answer came: what progress knows of its tasks is as of then. */
  const inboundHeard = createInboundHeard({ everyMs: waitMs });
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

  /** A shard's place in a pull: where its page starts, what was applied, and how many tasks to ask (shardPageSizes). */
  type Cursor = { shardId: number; after: number; acked: number; size: number };
  /**
   * An answer: a page per shard, or with `sparse` only the shards with news (a shard left out
   * has no task, and its max and last task ids are at its cursor); `readsCursorColumns`: the
   * source takes the next request's cursors as columns.
   */
  type Pulled = { shards: Pick<ShardPage, "shardId" | "tasks" | "maxTaskId" | "lastTaskId">[]; sparse: boolean; readsCursorColumns: boolean };

  /**
   * A page of each of remote's shards after its cursor; the source records each `acked` as
   * applied here. With `columns` (the source said it reads them) the cursors go as columns and
   * the answer is sparse: for hundreds of shards, several times less encoding on both sides.
   */
  async function fetchPages(remote: RemoteCluster, cursors: Cursor[], wait: number, signal: AbortSignal, columns: boolean): Promise<Pulled> {
    const res = await remote.clients.admin.pullReplicationTasks(
      {
        clusterName: cluster.clusterName,
        ...(columns
          ? {
            cursorColumns: {
              shardIds: cursors.map((c) => c.shardId),
              afterTaskIds: cursors.map((c) => BigInt(c.after)),
              ackedTaskIds: cursors.map((c) => BigInt(c.acked)),
              pageSizes: cursors.map((c) => c.size),
            },
          }
          : { shards: cursors.map((c) => ({ shardId: c.shardId, afterTaskId: BigInt(c.after), ackedTaskId: BigInt(c.acked), pageSize: c.size })) }),
        // For a source that reads no per-shard size (one from before it): a uniform page within the budget.
        pageSize: Math.min(Math.max(...cursors.map((c) => c.size)), Math.max(1, Math.floor(PULL_BUDGET / cursors.length))),
        waitTimeoutMs: wait,
      },
      { signal, timeoutMs: waitMs + 15_000 },
    );
    return { shards: res.shards, sparse: columns, readsCursorColumns: res.readsCursorColumns };
  }

  /**
   * fetchPages from a source that lacks PullReplicationTasks (a tern from before it): each
   * shard's GetReplicationTasks side by side, answered with the first page that has tasks
   * (and any others in by then) or, with none, once all have answered; the rest are dropped,
   * their shards answered empty at their cursors (asked again next time).
   */
  async function fetchShardByShard(remote: RemoteCluster, cursors: Cursor[], wait: number, signal: AbortSignal): Promise<Pulled> {
    const stop = new AbortController();
    const s = AbortSignal.any([signal, stop.signal]);
    const got = new Map<number, Pulled["shards"][number]>();
    const calls = cursors.map((c) =>
      remote.clients.admin
        .getReplicationTasks(
          {
            shardId: c.shardId, afterTaskId: BigInt(c.after), ackedTaskId: BigInt(c.acked), pageSize: c.size, includeEvents: true,
            clusterName: cluster.clusterName, waitTimeoutMs: wait,
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
    return { shards: cursors.map((c) => got.get(c.shardId) ?? unanswered(c)), sparse: false, readsCursorColumns: false };
  }

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
    const acks = new Map(await Promise.all(shardIds.map(async (id) => [id, await loadInboundAck(db, remote.name, id)] as const)));
    const durableSince = async () => {
      const now = await durable();
      if (now !== run) throw new AppliesLostError(`this cluster's database restarted since the stream began (its run is ${String(now)}, was ${String(run)}): the applies it had not flushed are gone; taking cluster ${remote.name}'s tasks again from the acks it holds`);
    };
    for (const [id, ack] of acks) progressOf(remote.name, id).ackLevel = ack;
    // The lag gauge of each shard, set when it changes (an answer for 512 shards mostly changes none).
    const shown = new Map<number, number>();
    const lag = (shardId: number, p: InboundProgress) => {
      const value = Math.max(0, p.maxTaskId - p.ackLevel);
      if (shown.get(shardId) === value) return;
      shown.set(shardId, value);
      metrics.set("replication_tasks_lag", { remote_cluster: remote.name, shard: String(shardId) }, value);
    };
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
        pages.set(sp.shardId, { remote, shardId: sp.shardId, from: ack, to, maxTaskId: p.maxTaskId, tasks: sp.tasks, signal, report });
      }
    }
    return [...pages.values()];
  }

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
      { clusterName: cluster.clusterName, cursors: { shardIds, afterTaskIds: positions, ackedTaskIds: positions, pageSizes: sizes }, waitTimeoutMs: waitMs },
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
      failed: (e) => {
        if (e instanceof AppliesLostError) return void (lost ??= e, local.abort(e));
        report.failed((ackFailure = new Error(`acks to cluster ${remote.name} failed, so it does not hear what was applied: ${fetchFailureReason(e) ?? loggableError(e)}`)));
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
    throw error;
  }

  /** Pulls and applies all of remote's shards until signal aborts (or, given `until`, the first round past it). */
  async function pull(remote: RemoteCluster, outer: AbortSignal, report: StreamReport, until?: number): Promise<void> {
    const { shardIds, acks, lag, durable } = await inbound(remote);
    // A call still out when the loop ends is not needed any more.
    const local = new AbortController();
    const signal = AbortSignal.any([outer, local.signal]);
    // Each shard's page by its backlog as last heard, the pull within PULL_BUDGET tasks (pull-budget.ts),
    // and as a stream's pages (sender.ts) at most `ramp`: 64 tasks at first and once the shard caught
    // up, twice that at each answer that left it behind, so a backlog's first pull comes and applies at once.
    const ramp = new Map(shardIds.map((id) => [id, FIRST_STREAM_PAGE]));
    const cursors = (after: Map<number, number>): Cursor[] => {
      const sizes = shardPageSizes(shardIds.map((id) => progressOf(remote.name, id).maxTaskId - after.get(id)!), pageSize, catchUpPageSize);
      return shardIds.map((id, i) => ({ shardId: id, after: after.get(id)!, acked: acks.get(id)!, size: Math.min(sizes[i]!, ramp.get(id)!) }));
    };
    // Whether the source's last answer said it reads cursor columns: the first request of a
    // stream (and so the first after a source is replaced by an older one) sends ShardCursors.
    let columns = false;
    // Until reprobeMs after the source last refused PullReplicationTasks (a tern before it;
    // pullRefusedAt), its shards are pulled one call each; then the call is tried again, so a
    // source upgraded without this stream noticing a restart is pulled in one call again.
    const fetch = async (cs: Cursor[], wait: number): Promise<Pulled> => {
      const refusedAt = pullRefusedAt.get(remote.name);
      if (refusedAt !== undefined && performance.now() - refusedAt < reprobeMs) return fetchShardByShard(remote, cs, wait, signal);
      try {
        const res = await fetchPages(remote, cs, wait, signal, columns);
        if (refusedAt !== undefined) log.info("remote cluster serves PullReplicationTasks now; pulling all its shards in one call", { remote: remote.name });
        pullRefusedAt.delete(remote.name);
        return res;
      } catch (e) {
        const code = ConnectError.from(e).code;
        if (columns && code === Code.InvalidArgument) {
          // A source replaced by one from before cursor columns sees no cursors: ask it again as ShardCursors.
          log.info("remote cluster does not read cursor columns (a tern before them); sending its cursors as ShardCursors", { remote: remote.name });
          columns = false;
          return fetch(cs, wait);
        }
        if (!notServed(e)) throw e;
        if (refusedAt === undefined) {
          log.warn("remote cluster does not serve PullReplicationTasks (a tern before it); pulling its shards one call each", { remote: remote.name });
        }
        pullRefusedAt.set(remote.name, performance.now());
        return fetchShardByShard(remote, cs, wait, signal);
      }
    };
    // What the source was told is applied, made durable first (durable), only when it moved
    // (inbound made the persisted acks durable).
    const told = new Map(acks);
    const tell = (asked: Cursor[]) => {
      if (asked.every((c) => told.get(c.shardId) === c.acked)) return Promise.resolve();
      return durable().then(() => asked.forEach((c) => told.set(c.shardId, c.acked)));
    };
    const ask = (after: Map<number, number>, wait: number) => {
      const asked = cursors(after);
      const res = tell(asked).then(() => fetch(asked, wait)).then((pulled) => ({ ...pulled, asked, arrivedAt: hear(remote.name) }));
      // Awaited by the loop, unless it stops first (aborted, or an apply failed): then nobody needs the answer.
      res.catch(() => {});
      return res;
    };
    // The first pull answers at once, so a (re)connection shows as connected without waiting out a long poll.
    let next = ask(acks, 0);
    const labels = { remote_cluster: remote.name };
    try {
      while (!signal.aborted && !(until !== undefined && performance.now() >= until)) {
        const res = await next;
        columns = res.readsCursorColumns;
        const pages = joinPages(remote, [res], acks, lag, signal, report);
        // A shard a sparse answer left out is caught up.
        const behindOf = new Map(res.shards.map((sp) => [sp.shardId, sp.lastTaskId < sp.maxTaskId]));
        for (const c of res.asked) ramp.set(c.shardId, nextStreamPage(ramp.get(c.shardId)!, catchUpPageSize, behindOf.get(c.shardId) ?? false));
        const after = new Map(acks);
        let behind = 0;
        for (const b of pages) {
          after.set(b.shardId, b.to);
          behind = Math.max(behind, b.maxTaskId - b.to);
        }
        if (res.sparse) {
          // A shard the answer left out has nothing new: its max task id is its cursor.
          const listed = new Set(res.shards.map((sp) => sp.shardId));
          for (const c of res.asked) {
            if (listed.has(c.shardId)) continue;
            const p = progressOf(remote.name, c.shardId);
            p.maxTaskId = c.after;
            lag(c.shardId, p);
          }
        }
        if (!pages.length) {
          report.ok();
          // Caught up: long-poll, which also tells the source the last applied pages.
          next = ask(acks, waitMs);
          continue;
        }
        // The next pages are asked for while these apply, so that tasks committed meanwhile are
        // here when they end: behind, at once; caught up, as a short long poll that the next commit
        // answers. It carries the previous acks, not these pages' (not applied yet): the short wait
        // bounds how long the source goes without hearing of this apply when nothing follows it
        // (the caught-up poll after it tells; a graceful failover waits for that).
        next = ask(after, behind > 0 ? 0 : prefetchWaitMs);
        await applyPages(pages);
        report.ok();
        const applyS = (Date.now() - res.arrivedAt) / 1000;
        for (const b of pages) for (let i = 0; i < b.tasks.length; i++) metrics.observe("replication_apply_latency", labels, applyS);
        applied(remote, pages, acks, lag);
      }
    } finally {
      local.abort();
    }
  }

  return {
    /** One stream per remote, for all its shards: shard counts that are multiples of each other route by hash on apply. */
    streamsFor(_remote: RemoteCluster): ReplicationStream[] {
      return [{ name: "history", run }];
    },
    /** What this process last saw of remote's shard, if it pulled it. */
    progress: (remote: string, shardId: number): InboundProgress | undefined => progress.get(remote)?.get(shardId),
    /**
     * When this process last heard from remote, and whether that is longer ago than the source
     * goes between messages and its slack (the stream's state says it is overdue then): its
     * tasks since are not seen, so the inbound lag is unknown.
     */
    heard: (remote: string): Heard => inboundHeard.of(remote),
    /** How long unheard before a remote's inbound lag is unknown: namespace replication's polls may fail that long too. */
    staleAfterMs: inboundHeard.staleAfterMs,
  };
}

export type HistoryReceiver = ReturnType<typeof createHistoryReceiver>;

