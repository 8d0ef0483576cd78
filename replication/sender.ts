import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import { failedPrecondition, invalidArgument, unavailable } from "../src/errors";
import { exactNumber } from "../src/frontend/convert";
import {
  AckReplicationTasksResponseSchema,
  GetReplicationTasksResponseSchema,
  PullReplicationTasksResponseSchema,
  StreamReplicationTasksResponseSchema,
  type AckReplicationTasksRequest,
  type AckReplicationTasksResponse,
  type ShardCursorColumns,
  type ShardPageSchema,
  type GetReplicationTasksRequest,
  type GetReplicationTasksResponse,
  type PullReplicationTasksRequest,
  type PullReplicationTasksResponse,
  type StreamReplicationTasksRequest,
  type StreamReplicationTasksResponse,
} from "../src/gen/tern/admin/v1/service_pb";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import { readEventsOf } from "../src/history/branch-store";
import { eventFromRow } from "../src/history/events";
import { listenAny, type EventNotifier } from "../src/history/notifier";
import type { Metrics } from "../src/observability/metrics";
import type { Db } from "../src/persistence/database";
import { createLongPolls } from "../src/long-polls";
import { nextTurn } from "../src/next-turn";
import { runStatement, tableCodec, textCache } from "../src/persistence/raw-statements";
import { clusterMetadata, historyEvents, namespaces, replicationTasks, shards } from "../src/persistence/schema";
import { anyShardKey, createOutboundAckRecorder, shardKey } from "./ack-levels";
import type { OutboxMarks } from "./outbox";
import { taskToProto, type OutboxTail, type TaskInit } from "./outbox-tail";
import { FIRST_STREAM_PAGE, nextStreamPage, shardPageBytes, withinBudget } from "./pull-budget";
import { shown } from "../src/shown";

export interface ReplicationSenderDeps {
  db: Db;
  cluster: CurrentCluster;
  /** Woken with `shard:N` after a task of shard N commits in this process. */
  notifier: EventNotifier;
  /** Cap of a long poll. */
  maxWaitMs?: number;
  /** Re-read at least this often while waiting: writers in other processes do not notify us. */
  recheckMs?: number;
  /** Least time between two saves of one peer shard's outbound ack (a waiting failover gets them at once). */
  ackSaveIntervalMs?: number;
  /** Task ids known committed (shared with the writer): a caught-up long poll waits without reading first. */
  outboxMarks?: OutboxMarks;
  /** Tasks this process committed lately, with their events: a peer's page from memory (see outbox-tail.ts). */
  outboxTail?: OutboxTail;
  metrics?: Metrics;
}

type TaskRow = typeof replicationTasks.$inferSelect;
/** One shard's answer: its tasks, the shard's highest task id, the last id the page covers, and where it came from. */
type Page = { tasks: TaskInit[]; max: number; last: number; source: string };
/** Which of a stream's cursors each round looks at (streamWatch). */
interface StreamWatch {
  next(marksTrusted: boolean): number[];
  looked(looked: readonly number[], pages: readonly Page[]): void;
  close(): void;
}
/** An event as json_build_object renders it inside the page query. */
type EventJson = { eventId: number; version: number; eventTime: string; attributes: Record<string, unknown> };

/**
 * The refusal of a peer whose connection this cluster (here) has disabled: a disabled connection
 * pauses both ways. The history streams and the namespace queue (namespace-sender.ts) refuse it
 * alike, so the peer's connection state says the same whichever of its streams reports first.
 */
export function connectionDisabled(peer: string, here: string): Error {
  return failedPrecondition(`replication with cluster ${shown(peer)} is disabled on ${here}`);
}

/**
 * The sending side of history replication (its counterpart is receiver.ts): serves a
 * pulling peer its namespaces' tasks of one shard, long-polls for new ones, and records
 * the peer's acked_task_id (or, unset, its after_task_id) as its outbound ack.
 */
export function createReplicationSender(deps: ReplicationSenderDeps) {
  const { db, cluster, notifier, maxWaitMs = 20_000, recheckMs = 1000, ackSaveIntervalMs, outboxMarks, outboxTail, metrics } = deps;
  const acks = createOutboundAckRecorder({ db, notifier, intervalMs: ackSaveIntervalMs });
  const polls = createLongPolls(() => unavailable(`cluster ${cluster.clusterName} is shutting down`));
  /** When a database page last found each peer connected and enabled: pages from memory rely on it for recheckMs. */
  const peerChecked = new Map<string, number>();
  /** Streams open per peer, and their gauge. */
  const streamsServed = new Map<string, number>();
  const countStreams = (peer: string, by: 1 | -1) => {
    const n = (streamsServed.get(peer) ?? 0) + by;
    streamsServed.set(peer, n);
    metrics?.set("replication_streams_served", { remote_cluster: peer }, n);
  };
  /** When each peer's polls last read every shard they asked for (servePages). */
  const fullReadAt = new Map<string, number>();

  /**
   * Whether a database read said within recheckMs that peer may pull: answers from memory rely
   * on it (a change made in this process clears it at once, one made by another process on the
   * database is seen within recheckMs).
   */
  const peerFresh = (peer: string) => Date.now() - (peerChecked.get(peer) ?? -Infinity) < recheckMs;

  /** A page from the outbox tail, if it holds the next tasks and the peer is fresh (peerFresh). */
  function tailPage(shardId: number, after: number, size: number, peer: string, withEvents: boolean, bytes: number) {
    if (!outboxTail || !peer || !withEvents || !peerFresh(peer)) return undefined;
    const page = outboxTail.page(shardId, after, size, peer, bytes);
    return page && { tasks: page.tasks, max: Math.max(page.last, outboxMarks?.latest(shardId) ?? 0), last: page.last, source: "memory" };
  }

  /**
   * One page after `after` and how far it covers (tasks for other clusters are passed
   * over), in one statement: the shard counter bounds the page (every id at or below a
   * committed counter is committed too, so nothing below `last` can still appear), and
   * the peer's connection row says whether it may pull at all.
   */
  async function readPage(shardId: number, after: number, size: number, peer: string, withEvents: boolean, bytes: number) {
    const params: unknown[] = [shardId, after, size];
    if (peer) params.push(peer, JSON.stringify([peer]));
    if (withEvents) params.push(bytes);
    const rows = await runStatement(db, pageText({ peer: Boolean(peer), withEvents }), params);
    const head = rows[0];
    if (!head) throw new Error(`shard ${shardId} does not exist`);
    checkPeer(peer, head.peer_enabled);
    const max = Number(head.page_max);
    const due = rows.filter((r) => r.task_id !== null);
    // Within the byte budget (pageText): the tasks before it took less than bytes, stored and rendered.
    const within = withEvents ? due.filter((r) => Number(r.packed_before) < bytes && Number(r.bytes_before) < bytes) : due;
    if (withEvents) metrics?.inc("replication_page_bytes_read", {}, due.reduce((n, r) => n + Number(r.page_bytes), 0));
    const found = within.map((r) => ({ task: tasksSql.fromRow(r), events: (r.page_events ?? null) as EventJson[] | null }));
    const last = found.length === size || within.length < due.length ? found.at(-1)!.task.taskId : max;
    const tasks = await Promise.all(found.map(async (r) => taskToProto(r.task, withEvents ? await eventsOf(db, r.task, r.events ?? []) : [])));
    return { tasks, max, last: Math.max(last, after), source: "database" };
  }

  /** Each shard's last task id (its counter), in one statement, once peer (empty: an operator's read) is found allowed to pull. */
  async function shardMaxes(shardIds: number[], peer: string): Promise<Map<number, number>> {
    const rows = await runStatement(db, countersText(Boolean(peer)), peer ? [shardIds, peer] : [shardIds]);
    const maxOf = new Map(rows.map((r) => [Number(r.shard_id), Number(r.page_max)]));
    const missing = shardIds.find((id) => !maxOf.has(id));
    if (missing !== undefined) throw new Error(`shard ${missing} does not exist`);
    checkPeer(peer, rows[0]!.peer_enabled);
    return maxOf;
  }

  /** A disabled connection pauses both ways: refused here too, on every read of a long poll. */
  function checkPeer(peer: string, enabled: unknown): void {
    if (!peer) return;
    if (enabled === null || enabled === undefined) throw failedPrecondition(`cluster ${shown(peer)} is not connected to ${cluster.clusterName}; add it there with cluster upsert`);
    if (!enabled) throw connectionDisabled(peer, cluster.clusterName);
    peerChecked.set(peer, Date.now());
  }

  /**
   * The pages of many shards that may have tasks: first every shard's counter (and the peer's
   * flag) in one statement, then a page read only for the shards whose counter moved past
   * their cursor; the others are answered empty. A puller of 512 shards had each of them read
   * at every round (the long polls' re-read each second, and every pull that does not wait).
   */
  async function readPages(cursors: { shardId: number; after: number; size: number }[], peer: string, withEvents: boolean): Promise<Page[]> {
    const maxOf = await shardMaxes(cursors.map((c) => c.shardId), peer);
    const bytes = shardPageBytes(cursors.filter((c) => maxOf.get(c.shardId)! > c.after).length);
    return Promise.all(cursors.map((c): Page | Promise<Page> => {
      const max = maxOf.get(c.shardId)!;
      return max <= c.after ? { tasks: [], max, last: c.after, source: "none" } : readPage(c.shardId, c.after, c.size, peer, withEvents, bytes);
    }));
  }

  /** AdminService.GetReplicationTasks: a page now, or a long poll until a task commits. */
  async function getReplicationTasks(req: GetReplicationTasksRequest, signal?: AbortSignal): Promise<GetReplicationTasksResponse> {
    checkShard(req.shardId);
    const after = exactNumber(req.afterTaskId, "after_task_id");
    // A pipelined puller asks past what it applied: only what it says it applied is acked.
    const acked = req.ackedTaskId === undefined ? after : Math.min(exactNumber(req.ackedTaskId, "acked_task_id"), after);
    const ask = { peer: req.clusterName, withEvents: req.includeEvents, waitMs: req.waitTimeoutMs };
    const [size] = withinBudget([req.pageSize], 100);
    return polls.run(signal, async (s) => {
      const { pages: [page] } = await servePages({ ...ask, cursors: [{ shardId: req.shardId, after, acked, size: size! }] }, s);
      return create(GetReplicationTasksResponseSchema, { tasks: page!.tasks, maxTaskId: BigInt(page!.max), lastTaskId: BigInt(page!.last) });
    });
  }

  /**
   * AdminService.PullReplicationTasks: a page of each shard asked for, once any has a task (or
   * the wait ends). A request with cursor_columns is answered sparse: only shards with news.
   */
  async function pullReplicationTasks(req: PullReplicationTasksRequest, signal?: AbortSignal): Promise<PullReplicationTasksResponse> {
    const peer = req.clusterName;
    if (!peer) throw invalidArgument("cluster_name is required: PullReplicationTasks serves a pulling cluster");
    if (req.cursorColumns && req.shards.length) throw invalidArgument("give the cursors as shards or as cursor_columns, not both");
    const asked = req.cursorColumns
      ? cursorsOfColumns(req.cursorColumns, "cursor_columns")
      : req.shards.map((c) => ({ shardId: c.shardId, after: exactNumber(c.afterTaskId, "after_task_id"), acked: exactNumber(c.ackedTaskId, "acked_task_id"), pageSize: c.pageSize }));
    const cursors = pullCursors(asked, req.pageSize);
    const sparse = req.cursorColumns !== undefined;
    return polls.run(signal, async (s) => {
      const { looked, pages } = await servePages({ peer, withEvents: true, waitMs: req.waitTimeoutMs, cursors }, s);
      return create(PullReplicationTasksResponseSchema, { shards: shardPages(cursors, looked, pages, sparse), readsCursorColumns: true });
    });
  }

  /**
   * AdminService.StreamReplicationTasks: PullReplicationTasks's answers, sparse, on one open
   * response. Each cursor moves on to the page just sent; the request's acks are recorded once
   * (AckReplicationTasks brings later ones). The first answer comes at once, then each as soon
   * as a shard has news, or without any after wait_timeout_ms, so the peer hears the stream is
   * alive. Ends with the peer's call, or refuses to go on once this server stops.
   */
  async function* streamReplicationTasks(req: StreamReplicationTasksRequest, signal: AbortSignal): AsyncGenerator<StreamReplicationTasksResponse> {
    const peer = req.clusterName;
    if (!peer) throw invalidArgument("cluster_name is required: StreamReplicationTasks serves a pulling cluster");
    if (!req.cursors) throw invalidArgument("cursors are required: where each shard's stream starts");
    const cursors = pullCursors(cursorsOfColumns(req.cursors, "cursors"), 0);
    // Each shard's pages start small and grow while it is behind (nextStreamPage), so the first
    // message after a pause comes and applies at once, and the larger ones follow it.
    const asked = cursors.map((c) => c.size);
    for (const c of cursors) c.size = Math.min(c.size, FIRST_STREAM_PAGE);
    const linked = polls.link(signal);
    const watch = streamWatch(cursors);
    let counted = false;
    try {
      for (let first = true; !signal.aborted; first = false) {
        const waitMs = first ? 0 : req.waitTimeoutMs;
        const { looked, pages } = await polls.run(linked, (s) => servePages({ peer, withEvents: true, waitMs, cursors, recordAcks: first, settle: true, watch }, s));
        // Counted once its first page found the peer connected: a series per name a caller sends
        // (each refused) grew /metrics without bound.
        if (!counted && peerChecked.has(peer)) {
          countStreams(peer, 1);
          counted = true;
        }
        if (signal.aborted) return;
        const shards = shardPages(cursors, looked, pages, true);
        pages.forEach((p, k) => {
          const c = cursors[looked[k]!]!;
          c.after = p.last;
          c.size = nextStreamPage(c.size, asked[looked[k]!]!, p.last < p.max);
        });
        yield create(StreamReplicationTasksResponseSchema, { shards });
      }
    } finally {
      watch.close();
      if (counted) countStreams(peer, -1);
    }
  }

  /** AdminService.AckReplicationTasks: a streaming peer's applied tasks, recorded as its acks. */
  async function ackReplicationTasks(req: AckReplicationTasksRequest): Promise<AckReplicationTasksResponse> {
    const peer = req.clusterName;
    if (!peer) throw invalidArgument("cluster_name is required: AckReplicationTasks records a pulling cluster's acks");
    if (req.ackedTaskIds.length !== req.shardIds.length) {
      throw invalidArgument(`acked_task_ids needs one entry per shard: shard_ids has ${req.shardIds.length}, acked_task_ids ${req.ackedTaskIds.length}`);
    }
    checkShardsOnce(req.shardIds, "acked");
    const moved = req.shardIds.map((shardId, i) => {
      const acked = exactNumber(req.ackedTaskIds[i]!, "acked_task_id");
      if (acked < 0) throw invalidArgument(`shard ${shardId}'s acked task id must not be negative, not ${acked}`);
      return { shardId, acked };
    });
    if (!moved.length) return create(AckReplicationTasksResponseSchema, {});
    // Only a connected peer's acks, and none past a shard's last task: an ack ahead of what the
    // shard holds would let cleanup drop tasks before the peer has them.
    await refusePastLastTask(moved.map((m) => ({ shardId: m.shardId, id: m.acked })), peer, "acked task id");
    await acks.record(peer, moved);
    return create(AckReplicationTasksResponseSchema, {});
  }

  /**
   * Refuses cursors past their shard's last task (pages[k] is of cursors[k]): the peer's acks
   * are at most its cursors, and an ack ahead of what the shard holds would let cleanup drop
   * tasks before the peer has them. A page's max may come from this process's marks, which can
   * lag another writer's commit: a cursor past it is refused only once the counters agree.
   */
  async function checkCursorsHeld(cursors: readonly { shardId: number; after: number }[], pages: readonly Page[], peer: string): Promise<void> {
    const past = cursors.filter((c, k) => c.after > pages[k]!.max);
    if (!past.length) return;
    const why = `: ${cluster.clusterName} never sent tasks past it (was its database replaced?)`;
    await refusePastLastTask(past.map((c) => ({ shardId: c.shardId, id: c.after })), peer, "after_task_id", why);
  }

  /**
   * Refuses a task id (`field`, in the error) past its shard's last task, read from the shard
   * counters (shardMaxes, which also checks that peer may pull).
   */
  async function refusePastLastTask(ids: readonly { shardId: number; id: number }[], peer: string, field: string, why = ""): Promise<void> {
    const maxOf = await shardMaxes(ids.map((x) => x.shardId), peer);
    const ahead = ids.find((x) => x.id > maxOf.get(x.shardId)!);
    if (ahead) throw invalidArgument(`shard ${ahead.shardId}'s ${field} ${ahead.id} is past its last task, ${maxOf.get(ahead.shardId)}${why}`);
  }

  /** Cursors given as columns (`field` names them in errors). */
  function cursorsOfColumns(cols: ShardCursorColumns, field: string): { shardId: number; after: number; acked: number; pageSize: number }[] {
    const n = cols.shardIds.length;
    if (cols.afterTaskIds.length !== n || cols.ackedTaskIds.length !== n || (cols.pageSizes.length && cols.pageSizes.length !== n)) {
      throw invalidArgument(
        `${field} needs one entry per shard in each list: shard_ids has ${n}, after_task_ids ${cols.afterTaskIds.length}, ` +
        `acked_task_ids ${cols.ackedTaskIds.length}, page_sizes ${cols.pageSizes.length} (page_sizes may be empty)`,
      );
    }
    return cols.shardIds.map((shardId, i) => ({
      shardId, after: exactNumber(cols.afterTaskIds[i]!, "after_task_id"), acked: exactNumber(cols.ackedTaskIds[i]!, "acked_task_id"), pageSize: cols.pageSizes[i] ?? 0,
    }));
  }

  /**
   * A pull's cursors, checked (each shard once, at least one) and their pages sized within
   * PULL_BUDGET tasks in all, whatever the sizes asked add up to (pull-budget.ts). A pipelined
   * puller asks past what it applied: its ack is at most its cursor.
   */
  function pullCursors(asked: { shardId: number; after: number; acked: number; pageSize: number }[], pageSize: number) {
    if (!asked.length) throw invalidArgument("shards must name at least one shard");
    checkShardsOnce(asked.map((c) => c.shardId), "asked for");
    const sizes = withinBudget(asked.map((c) => c.pageSize), pageSize);
    return asked.map((c, i) => ({ shardId: c.shardId, after: c.after, acked: Math.min(c.acked, c.after), size: sizes[i]! }));
  }

  /** The pages (of cursors `looked`) as a pull answers them; sparse, only the shards with news (tasks, or a max or last past the cursor). */
  function shardPages(cursors: readonly { shardId: number; after: number }[], looked: readonly number[], pages: Page[], sparse: boolean): MessageInitShape<typeof ShardPageSchema>[] {
    const shards: MessageInitShape<typeof ShardPageSchema>[] = [];
    pages.forEach((p, k) => {
      const { shardId, after } = cursors[looked[k]!]!;
      if (!sparse || p.tasks.length || p.max !== after || p.last !== after) shards.push({ shardId, tasks: p.tasks, maxTaskId: BigInt(p.max), lastTaskId: BigInt(p.last) });
    });
    return shards;
  }

  /** Each shard id in range and given once (`what` says how it was given, in the error). */
  function checkShardsOnce(shardIds: readonly number[], what: string): void {
    const ids = new Set<number>();
    for (const shardId of shardIds) {
      checkShard(shardId);
      if (ids.has(shardId)) throw invalidArgument(`shard ${shardId} is ${what} twice`);
      ids.add(shardId);
    }
  }

  function checkShard(shardId: number): void {
    if (shardId < 1 || shardId > cluster.historyShardCount) throw invalidArgument(`shard id must be 1..${cluster.historyShardCount}, not ${shardId}`);
  }

  /**
   * A page of each cursor's shard (at most its size), in cursor order, as soon as one has a
   * task, or passed some over (of namespaces not listing peer), or the wait ends. peer (empty
   * for an operator's read) gets only its namespaces' tasks, and each cursor's `acked` is
   * recorded as its ack. With `watch` (a stream's), a round between full reads looks only at
   * the shards whose mark moved and those its last round did not find caught up: the others
   * are where the stream left them, and are not in the answer (`looked` says which cursors the
   * pages are of; every cursor without `watch`).
   */
  async function servePages(
    ask: {
      peer: string; withEvents: boolean; waitMs: number; cursors: { shardId: number; after: number; acked: number; size: number }[];
      recordAcks?: boolean; settle?: boolean; watch?: StreamWatch;
    },
    signal: AbortSignal,
  ): Promise<{ looked: number[]; pages: Page[] }> {
    const { peer, withEvents, cursors, watch } = ask;
    const deadline = Date.now() + Math.min(Math.max(ask.waitMs, 0), maxWaitMs);
    // Many shards wait on any shard's commit: one key, not one each (a commit in a shard not
    // asked for wakes the poll for a round answered from the marks).
    const keys = cursors.length > MANY_SHARDS ? [anyShardKey] : cursors.map((c) => shardKey(c.shardId));
    // A shard past every commit known here is read only every recheckMs (writers in other
    // processes do not wake us): a peer's polls share that clock, an operator's read has its own.
    let ownFullRead = -Infinity;
    for (let first = true; ; first = false) {
      const left = deadline - Date.now();
      const listening = left > 0 ? listenAny(notifier, keys, Math.min(left, recheckMs), signal) : undefined;
      try {
        const full = Date.now() - (peer ? fullReadAt.get(peer) ?? -Infinity : ownFullRead) >= recheckMs;
        if (full && peer) fullReadAt.set(peer, Date.now());
        else if (full) ownFullRead = Date.now();
        // Past every commit known here (the usual caught-up peer): answered empty without a
        // read, but on a full read, and for a peer only while a read said lately that it may
        // pull (as pages from memory). An operator's read that does not wait still reads. The
        // marks move before the notifier wakes us.
        const marksTrusted = peer ? !full && peerFresh(peer) : first ? listening !== undefined : !full;
        const looked = watch ? watch.next(marksTrusted) : cursors.map((_, i) => i);
        // The peer will not ask below its cursors again (a stream's other cursors have not moved).
        if (peer && first) for (const i of looked) outboxTail?.passed(cursors[i]!.shardId, peer, cursors[i]!.after);
        const pages: (Page | undefined)[] = looked.map((i) => {
          const c = cursors[i]!;
          const known = marksTrusted ? outboxMarks?.latest(c.shardId) : undefined;
          if (known !== undefined && c.after >= known) return { tasks: [], max: known, last: c.after, source: "none" };
          return undefined;
        });
        // The answer's bytes shared among the shards that may have tasks.
        const bytes = shardPageBytes(pages.filter((p) => !p).length);
        pages.forEach((p, k) => {
          const c = cursors[looked[k]!]!;
          if (!p) pages[k] = tailPage(c.shardId, c.after, c.size, peer, withEvents, bytes);
        });
        const unread: number[] = [];
        pages.forEach((p, k) => p || unread.push(k));
        // Few shards: a page read each, side by side. Many: their counters first (readPages).
        const unreadCursors = unread.map((k) => cursors[looked[k]!]!);
        const read = unread.length > MANY_SHARDS
          ? readPages(unreadCursors, peer, withEvents)
          : Promise.all(unreadCursors.map((c) => readPage(c.shardId, c.after, c.size, peer, withEvents, bytes)));
        const got = await read;
        unread.forEach((k, j) => (pages[k] = got[j]));
        const done = pages as Page[];
        if (peer && ask.recordAcks !== false) {
          if (first) await checkCursorsHeld(looked.map((i) => cursors[i]!), done, peer);
          await acks.record(peer, cursors);
        }
        done.forEach((p, k) => outboxMarks?.advance(cursors[looked[k]!]!.shardId, p.max));
        watch?.looked(looked, done);
        const found = done.filter((p) => p.tasks.length);
        // Tasks passed over (of namespaces not listing the peer) are news too: answered, the peer
        // acks past them now, not at the wait's end (a graceful failover to it waits for that ack).
        const passed = done.some((p, k) => p.last > cursors[looked[k]!]!.after);
        if (found.length || passed || !listening || signal.aborted) {
          if (peer) for (const p of found) metrics?.inc("replication_pages_sent", { remote_cluster: peer, source: p.source });
          return { looked, pages: done };
        }
        await listening.woke;
        // Woken by a commit: with `settle`, the commits answered in the same turn go too (and
        // one handed over after the one that woke us is not missed, a hole sending us to the database).
        if (ask.settle) await nextTurn();
      } finally {
        listening?.cancel();
      }
    }
  }

  /**
   * Which of a stream's cursors a round looks at. Every one at first and whenever the marks
   * are not trusted (a full read, a peer not lately checked); between those, the shards whose
   * mark moved since (taken from the marks' watch) and those the last look did not answer
   * from the marks (a page sent or read: the cursor moved, or more may follow). Any other
   * shard was answered from the marks, caught up, and neither its cursor nor its mark has
   * moved since, so a look would answer it the same.
   */
  function streamWatch(cursors: readonly { shardId: number }[]): StreamWatch {
    const moved = outboxMarks?.watch();
    const indexOf = new Map(cursors.map((c, i) => [c.shardId, i]));
    let again = new Set<number>();
    let primed = false;
    return {
      next(marksTrusted: boolean): number[] {
        const taken = moved?.take() ?? [];
        if (!moved || !primed || !marksTrusted) return cursors.map((_, i) => i);
        for (const shardId of taken) {
          const i = indexOf.get(shardId);
          if (i !== undefined) again.add(i);
        }
        return [...again].sort((x, y) => x - y);
      },
      looked(looked: readonly number[], pages: readonly Page[]): void {
        if (looked.length === cursors.length) primed = true;
        const next = new Set<number>();
        pages.forEach((p, k) => p.source !== "none" && next.add(looked[k]!));
        again = next;
      },
      close: () => moved?.close(),
    };
  }

  return {
    getReplicationTasks,
    pullReplicationTasks,
    streamReplicationTasks,
    ackReplicationTasks,
    /** Forgets which peers a database page found enabled: after this process changed a connection. */
    forgetPeers: () => peerChecked.clear(),
    /** Ends open long polls (they answer at once) and refuses new ones; resolves once none runs. */
    async stop(): Promise<void> {
      await polls.end();
      await acks.stop();
    },
  };
}

export type ReplicationSender = ReturnType<typeof createReplicationSender>;

/**
 * The task's events: as read with the page, or, when the run has since switched to
 * another branch (it lost a conflict here), from the branch they are kept on.
 */
async function eventsOf(db: Db, t: TaskRow, found: EventJson[]): Promise<HistoryEvent[]> {
  if (found.length === t.nextEventId - t.firstEventId) return found.map(eventFromJson);
  return readEventsOf(db, t, t.versionHistory, t.firstEventId, t.nextEventId);
}

function eventFromJson(e: EventJson): HistoryEvent {
  return eventFromRow({ eventId: Number(e.eventId), version: Number(e.version), eventTime: new Date(e.eventTime), attributes: e.attributes });
}

const tasksSql = tableCodec(replicationTasks);
const eventsSql = tableCodec(historyEvents);
const shardsSql = tableCodec(shards);
const namespacesSql = tableCodec(namespaces);
const peersSql = tableCodec(clusterMetadata);

/**
 * More shards than this in a poll wait on any shard's commit (anyShardKey), and more than this
 * to read in one round have their counters read first (readPages): one statement, not one each.
 */
const MANY_SHARDS = 16;

/** The peer's connection flag (null when it is not a connected cluster), its name in param. */
const peerFlagSql = (param: string) =>
  `(select ${peersSql.name("enableConnection")} from ${peersSql.table} where ${peersSql.name("clusterName")} = ${param} and ${peersSql.name("isCurrent")} = false)`;

/** Every shard's counter in $1 (an int array), with the peer's flag (peer: its name in $2). */
const countersText = textCache((peer: boolean) =>
  `select ${shardsSql.name("shardId")} as shard_id, ${shardsSql.name("nextTaskId")} - 1 as page_max, ${peer ? peerFlagSql("$2") : "true"} as peer_enabled ` +
  `from ${shardsSql.table} where ${shardsSql.name("shardId")} = any($1::int[])`);

/**
 * The page statement of one shape: $1 shard, $2 after, $3 page size, then the peer's
 * name ($4) and the peer as a jsonb array ($5), then, with events, the page's byte budget
 * ($6, or $4 without a peer). Always one row at least: the counter and the peer's flag, with
 * null task columns when no task is due.
 *
 * With events, each task comes with how many bytes the tasks before it in the page take:
 * packed_before, their events as the writer estimated them (the task's event_bytes, known
 * before anything is read), and bytes_before, their events as rendered here. A task whose
 * packed_before is within the budget has its events rendered; the reader keeps the tasks
 * whose two counts are both within it (the first always), so a page of large events renders
 * about the budget's worth, not a page size's, and sends no more than that and one task.
 * A task written before event_bytes counts its events as stored (pg_column_size, read
 * without detoasting them): events that compress well (a repetitive payload of a megabyte
 * stored in a few kilobytes) were rendered past the budget, up to a page size's (hundreds of
 * MB), when that was all there was to go by. A walk a task at a time that rendered only what
 * it sent (e8b2e0b) cut the catch-up of small tasks from about 4,000 to 844 events/s, and was
 * reverted.
 */
const pageText = textCache((shape: { peer: boolean; withEvents: boolean }) => {
  const t = (k: Parameters<typeof tasksSql.name>[0]) => `rt.${tasksSql.name(k)}`;
  const e = (k: Parameters<typeof eventsSql.name>[0]) => `ev.${eventsSql.name(k)}`;
  const taskEvents = `from ${eventsSql.table} ev ` +
    `where ${e("namespaceId")} = ${t("namespaceId")} and ${e("workflowId")} = ${t("workflowId")} and ${e("runId")} = ${t("runId")} ` +
    `and ${e("eventId")} >= ${t("firstEventId")} and ${e("eventId")} < ${t("nextEventId")} and ${e("version")} = ${t("version")}`;
  const events = `(select json_agg(json_build_object('eventId', ${e("eventId")}, 'version', ${e("version")}, 'eventTime', ${e("eventTime")}, ` +
    `'attributes', ${e("attributes")}) order by ${e("eventId")}) ${taskEvents})`;
  const wanted = shape.peer
    ? ` and exists (select 1 from ${namespacesSql.table} ns where ns.${namespacesSql.name("id")} = ${t("namespaceId")} ` +
      `and ns.${namespacesSql.name("clusters")} @> $5::jsonb)`
    : "";
  const peerFlag = shape.peer ? peerFlagSql("$4") : "true";
  const tasks = (extra: string) =>
    `select ${tasksSql.all("rt")}, ${extra} ` +
    `from ${tasksSql.table} rt where ${t("shardId")} = $1 and ${t("taskId")} > $2 and ${t("taskId")} <= counter.page_max${wanted} ` +
    `order by ${t("taskId")} limit $3`;
  const budget = shape.peer ? "$6" : "$4";
  const before = (column: string) => `sum(rt.${column}) over (order by ${t("taskId")}) - rt.${column}`;
  const page = shape.withEvents
    ? `select rt.*, ${before("page_bytes")} as bytes_before from (` +
      `select rt.*, coalesce(octet_length(rt.page_events::text), 0) as page_bytes from (` +
      `select rt.*, case when rt.packed_before < ${budget} then ${events} end as page_events from (` +
      `select rt.*, ${before("packed")} as packed_before from (` +
      tasks(`coalesce(${t("eventBytes")}, (select coalesce(sum(pg_column_size(${e("attributes")})), 0) ${taskEvents})) as packed`) +
      `) rt) rt) rt) rt order by ${t("taskId")}`
    : tasks("null as page_events");
  return `with counter as (select ${shardsSql.name("nextTaskId")} - 1 as page_max from ${shardsSql.table} where ${shardsSql.name("shardId")} = $1) ` +
    `select counter.page_max, ${peerFlag} as peer_enabled, page.* from counter left join lateral (${page}) page on true`;
}, (shape) => `${shape.peer}/${shape.withEvents}`);
