import type { CurrentCluster } from "../src/cluster/bootstrap";
import { failedPrecondition } from "../src/errors";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import { readEventsOf } from "../src/history/branch-store";
import { eventFromRow } from "../src/history/events";
import type { Metrics } from "../src/observability/metrics";
import type { Db } from "../src/persistence/database";
import { runStatement, tableCodec, textCache } from "../src/persistence/raw-statements";
import { clusterMetadata, historyEvents, namespaces, queueCounters, replicationTasks, shards } from "../src/persistence/schema";
import { shown } from "../src/shown";
import { NAMESPACE_QUEUE } from "./namespace-queue";
import type { NamespaceQueueWatch } from "./namespace-queue-watch";
import type { OutboxMarks } from "./outbox";
import { taskToProto, type TaskInit } from "./outbox-tail";
import { shardPageBytes } from "./pull-budget";

type TaskRow = typeof replicationTasks.$inferSelect;
/** One shard's answer: its tasks, the shard's highest task id, the last id the page covers, and where it came from. */
export type Page = { tasks: TaskInit[]; max: number; last: number; source: string };
/** Which of a stream's cursors each round looks at (streamWatch). */
export interface StreamWatch {
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

export interface PageReaderDeps {
  db: Db;
  cluster: CurrentCluster;
  metrics?: Metrics;
  /** When a database read last found each peer connected and enabled (set here, read by the sender). */
  peerChecked: Map<string, number>;
  /** Told the namespace queue's max at each idle re-read (marksHold), for the namespace sender's polls. */
  namespaceQueue?: NamespaceQueueWatch;
}

/**
 * The sender's reads of its outbox (replication_tasks) from the database (sender.ts serves
 * them): a shard's page with its events, and many shards' counters, each one statement that
 * also says whether the peer may pull.
 */
export function createPageReader({ db, cluster, metrics, peerChecked, namespaceQueue }: PageReaderDeps) {
  /** The snapshot (pg_current_snapshot) at which the marks last held, with the marks' summary then. */
  let heldAt: { snapshot: string; shards: number; total: number } | undefined;

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

  /**
   * Whether every shard's counter is at the mark known here (marks.summary(): each mark is at
   * most its counter, so equal sums over as many shards mean none moved past its mark), in one
   * statement that returns one row, once peer is found allowed to pull. The sender's re-read each
   * recheckMs asks this first: an idle cluster of 16,384 shards read and mapped every counter
   * twice a second (once per direction), about 5% of a CPU each, for nothing new. The sum itself
   * read every shard each second (16,384 rows per direction): it is left out while the database's
   * snapshot is the one the marks last held at (MARKS_TEXT).
   */
  async function marksHold(peer: string, marks: { shards: number; total: number }): Promise<boolean> {
    const since = heldAt && heldAt.shards === marks.shards && heldAt.total === marks.total ? heldAt.snapshot : null;
    const startedAt = Date.now();
    const [row] = await runStatement(db, MARKS_TEXT, [peer, since]);
    namespaceQueue?.seen(Number(row!.namespace_max ?? 0), startedAt);
    checkPeer(peer, row!.peer_enabled);
    // Not summed: the snapshot is the one the marks last held at, so nothing committed since.
    if (row!.counters === null) return true;
    const [count, total] = String(row!.counters).split("/");
    const holds = Number(count) === marks.shards && Number.isSafeInteger(marks.total) && total === String(marks.total);
    heldAt = holds ? { snapshot: String(row!.snapshot), ...marks } : undefined;
    return holds;
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

  return { readPage, readPages, shardMaxes, marksHold };
}

/**
 * Which of a stream's cursors a round looks at. Every one at first and whenever the marks
 * are not trusted (a full read, a peer not lately checked); between those, the shards whose
 * mark moved since (taken from the marks' watch) and those the last look did not answer
 * from the marks (a page sent or read: the cursor moved, or more may follow). Any other
 * shard was answered from the marks, caught up, and neither its cursor nor its mark has
 * moved since, so a look would answer it the same.
 */
export function streamWatch(outboxMarks: OutboxMarks | undefined, cursors: readonly { shardId: number }[]): StreamWatch {
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
const countersSql = tableCodec(queueCounters);

/**
 * More shards than this in a poll wait on any shard's commit (anyShardKey), and more than this
 * to read in one round have their counters read first (readPages): one statement, not one each.
 */
export const MANY_SHARDS = 16;

/** The peer's connection flag (null when it is not a connected cluster), its name in param. */
const peerFlagSql = (param: string) =>
  `(select ${peersSql.name("enableConnection")} from ${peersSql.table} where ${peersSql.name("clusterName")} = ${param} and ${peersSql.name("isCurrent")} = false)`;

/** Every shard's counter in $1 (an int array), with the peer's flag (peer: its name in $2). */
const countersText = textCache((peer: boolean) =>
  `select ${shardsSql.name("shardId")} as shard_id, ${shardsSql.name("nextTaskId")} - 1 as page_max, ${peer ? peerFlagSql("$2") : "true"} as peer_enabled ` +
  `from ${shardsSql.table} where ${shardsSql.name("shardId")} = any($1::int[])`);

/**
 * The statement's snapshot, and how many shards there are and their counters' sum ("count/sum",
 * exact), unless the snapshot is $2's; with the peer's flag (its name in $1). A snapshot
 * (xmin:xmax:in-progress xids, of the whole PostgreSQL instance) stays the same only while no
 * transaction that writes begins or ends: a counter moved by a commit since $2's changed it (an
 * xid past its xmax, or one gone from its in-progress list). On an idle instance the sum is
 * skipped; on one that other databases write to, it is summed as before. The CASE runs its
 * subquery only when it is taken. With the namespace queue's max (NamespaceQueueWatch): one row
 * by its key, read here so that the namespace sender's polls need not each second.
 */
const MARKS_TEXT =
  `select pg_current_snapshot()::text as snapshot, case when pg_current_snapshot()::text is distinct from $2::text then ` +
  `(select count(*)::text || '/' || coalesce(sum(${shardsSql.name("nextTaskId")} - 1), 0)::text from ${shardsSql.table}) end as counters, ` +
  `${peerFlagSql("$1")} as peer_enabled, ` +
  `(select ${countersSql.name("nextId")} - 1 from ${countersSql.table} where ${countersSql.name("queue")} = '${NAMESPACE_QUEUE}') as namespace_max`;

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
