import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import { invalidArgument, unavailable } from "../src/errors";
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
import { listenAny, type EventNotifier } from "../src/history/notifier";
import type { Metrics } from "../src/observability/metrics";
import type { Db } from "../src/persistence/database";
import { createLongPolls } from "../src/long-polls";
import { nextTurn } from "../src/next-turn";
import { anyShardKey, createOutboundAckRecorder, readCleanedMarks, shardKey } from "./ack-levels";
import type { OutboxMarks } from "./outbox";
import type { OutboxTail } from "./outbox-tail";
import type { NamespaceQueueWatch } from "./namespace-queue-watch";
import { refuseUnreadMarks } from "./cleaned-refusal";
import { createPageReader, MANY_SHARDS, streamWatch, type Page, type StreamWatch } from "./page-reader";
import { FIRST_STREAM_PAGE, nextStreamPage, shardPageBytes, withinBudget } from "./pull-budget";

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
  /** Told the namespace queue's max at each idle re-read (see namespace-queue-watch.ts). */
  namespaceQueue?: NamespaceQueueWatch;
}

/**
 * The sending side of history replication (its counterpart is receiver.ts): serves a
 * pulling peer its namespaces' tasks of one shard, long-polls for new ones, and records
 * the peer's acked_task_id (or, unset, its after_task_id) as its outbound ack.
 */
export function createReplicationSender(deps: ReplicationSenderDeps) {
  const { db, cluster, notifier, maxWaitMs = 20_000, recheckMs = 1000, ackSaveIntervalMs, outboxMarks, outboxTail, metrics, namespaceQueue } = deps;
  const acks = createOutboundAckRecorder({ db, notifier, intervalMs: ackSaveIntervalMs });
  const polls = createLongPolls(() => unavailable(`cluster ${cluster.clusterName} is shutting down`));
  /** When a database page last found each peer connected and enabled: pages from memory rely on it for recheckMs. */
  const peerChecked = new Map<string, number>();
  const { readPage, readPages, shardMaxes, marksHold } = createPageReader({ db, cluster, metrics, peerChecked, namespaceQueue });
  /** Streams open per peer, and their gauge. */
  const streamsServed = new Map<string, number>();
  const countStreams = (peer: string, by: 1 | -1) => {
    const n = (streamsServed.get(peer) ?? 0) + by;
    streamsServed.set(peer, n);
    metrics?.set("replication_streams_served", { remote_cluster: peer }, n);
  };
  /** When each peer's polls last read every shard they asked for (servePages). */
  const fullReadAt = new Map<string, number>();
  /** Each peer's cleaned_through per shard (cleanup.ts) and when it was read. */
  const cleanedOf = new Map<string, { at: number; marks: Map<number, number> }>();

  /**
   * How far cleanup deleted peer's tasks past its ack, per shard: read after a page found peer
   * enabled (cleanup locks the row it skipped, so an enable seen means its marks are seen), at a
   * stream's start, and after every database page since (a page read after a cleanup lacks what
   * it deleted, and another process may have disabled and enabled peer within recheckMs: marks
   * read before that page would not say so); at most recheckMs old otherwise. A mark moves only
   * while peer is disabled.
   */
  async function cleanedMarks(peer: string, fresh: boolean): Promise<Map<number, number>> {
    const known = cleanedOf.get(peer);
    if (known && !fresh && known.at > (peerChecked.get(peer) ?? 0) && Date.now() - known.at < recheckMs) return known.marks;
    const marks = await readCleanedMarks(db, peer);
    cleanedOf.set(peer, { at: Date.now(), marks });
    return marks;
  }

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
      // Its answer has no room for the cleaned mark.
      if (ask.peer) refuseUnreadMarks(cluster.clusterName, ask.peer, [{ shardId: req.shardId, after }], await cleanedMarks(ask.peer, false));
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
      const cleaned = await cleanedMarks(peer, false);
      if (!req.readsCleanedThrough) refuseUnreadMarks(cluster.clusterName, peer, cursors, cleaned);
      return create(PullReplicationTasksResponseSchema, { shards: shardPages(cursors, looked, pages, sparse, cleaned), readsCursorColumns: true });
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
    const watch = streamWatch(outboxMarks, cursors);
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
        const cleaned = await cleanedMarks(peer, first);
        if (!req.readsCleanedThrough) refuseUnreadMarks(cluster.clusterName, peer, cursors, cleaned);
        const shards = shardPages(cursors, looked, pages, true, cleaned);
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

  /**
   * The pages (of cursors `looked`) as a pull answers them; sparse, only the shards with news (tasks,
   * or a max or last past the cursor, or tasks after the cursor cleaned: its cleaned_through).
   */
  function shardPages(
    cursors: readonly { shardId: number; after: number }[], looked: readonly number[], pages: Page[], sparse: boolean, cleaned: ReadonlyMap<number, number>,
  ): MessageInitShape<typeof ShardPageSchema>[] {
    const shards: MessageInitShape<typeof ShardPageSchema>[] = [];
    pages.forEach((p, k) => {
      const { shardId, after } = cursors[looked[k]!]!;
      const through = cleaned.get(shardId) ?? 0;
      const cleanedThroughTaskId = BigInt(through > after ? through : 0);
      if (!sparse || p.tasks.length || p.max !== after || p.last !== after || cleanedThroughTaskId) {
        shards.push({ shardId, tasks: p.tasks, maxTaskId: BigInt(p.max), lastTaskId: BigInt(p.last), cleanedThroughTaskId });
      }
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
        let full = Date.now() - (peer ? fullReadAt.get(peer) ?? -Infinity : ownFullRead) >= recheckMs;
        if (full && peer) fullReadAt.set(peer, Date.now());
        else if (full) ownFullRead = Date.now();
        // A peer's re-read finds first whether any counter moved past its mark (one row): if none
        // did, the marks are as good as a read of every shard, and the round goes on from them.
        if (full && peer && outboxMarks && (await marksHold(peer, outboxMarks.summary()))) full = false;
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

  return {
    getReplicationTasks,
    pullReplicationTasks,
    streamReplicationTasks,
    ackReplicationTasks,
    /** Forgets which peers a database page found enabled, and their marks: after this process changed a connection. */
    forgetPeers: () => (peerChecked.clear(), cleanedOf.clear()),
    /** Ends open long polls (they answer at once) and refuses new ones; resolves once none runs. */
    async stop(): Promise<void> {
      await polls.end();
      await acks.stop();
    },
  };
}

export type ReplicationSender = ReturnType<typeof createReplicationSender>;

