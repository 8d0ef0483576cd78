import { Code, ConnectError } from "@connectrpc/connect";
import type { ShardPage } from "../src/gen/tern/admin/v1/service_pb";
import type { RemoteCluster, StreamReport } from "./manager";
import { notServed } from "./not-served";
import { FIRST_STREAM_PAGE, nextStreamPage, PULL_BUDGET, shardPageSizes } from "./pull-budget";
import type { ReceiverPathDeps } from "./receiver";

/** A shard's place in a pull: where its page starts, what was applied, and how many tasks to ask (shardPageSizes). */
type Cursor = { shardId: number; after: number; acked: number; size: number };
/**
 * An answer: a page per shard, or with `sparse` only the shards with news (a shard left out
 * has no task, and its max and last task ids are at its cursor); `readsCursorColumns`: the
 * source takes the next request's cursors as columns.
 */
/** A pull's answer; a shard's cleanedThroughTaskId is unset from GetReplicationTasks (sources from before any cleaned a peer's tasks). */
export type Pulled = {
  shards: (Pick<ShardPage, "shardId" | "tasks" | "maxTaskId" | "lastTaskId"> & Partial<Pick<ShardPage, "cleanedThroughTaskId">>)[];
  sparse: boolean;
  readsCursorColumns: boolean;
};

/**
 * The receiver's pull path (receiver.ts runs it for a source that refuses StreamReplicationTasks;
 * its counterpart is sender.ts's PullReplicationTasks): a call per page of all a remote's shards,
 * or from a source before that call, GetReplicationTasks per shard.
 */
export function createPullReceiver(deps: ReceiverPathDeps) {
  const { cluster, log, metrics, pageSize, catchUpPageSize, waitMs, prefetchWaitMs, reprobeMs, hear, unheard, progressOf, inbound, repairCleaned, joinPages, applied, applyPages } = deps;
  /** When each remote last refused PullReplicationTasks (terns before it). */
  const pullRefusedAt = new Map<string, number>();

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
        readsCleanedThrough: true,
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
      const called = () =>
        fetch(asked, wait).catch((e) => {
          // Not a call this side stopped: the source's lag is unknown until it answers again.
          if (!signal.aborted) unheard(remote.name, e);
          throw e;
        });
      const res = tell(asked).then(called).then((pulled) => ({ ...pulled, asked, arrivedAt: hear(remote.name) }));
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
        await repairCleaned(remote, [res], acks);
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

  return { pull };
}
