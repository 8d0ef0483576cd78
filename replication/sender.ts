import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import { failedPrecondition, invalidArgument, unavailable } from "../src/errors";
import {
  GetReplicationTasksResponseSchema,
  type GetReplicationTasksRequest,
  type GetReplicationTasksResponse,
  type ReplicationTaskSchema,
} from "../src/gen/tern/admin/v1/service_pb";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import { readEventsOf } from "../src/history/branch-store";
import { eventFromRow } from "../src/history/events";
import type { EventNotifier } from "../src/history/notifier";
import type { Db } from "../src/persistence/database";
import { runStatement, tableCodec, textCache } from "../src/persistence/raw-statements";
import { clusterMetadata, historyEvents, namespaces, replicationTasks, shards } from "../src/persistence/schema";
import { createOutboundAckRecorder, shardKey } from "./ack-levels";
import { versionHistoryToProto } from "./version-history";

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
}

type TaskRow = typeof replicationTasks.$inferSelect;
/** An event as json_build_object renders it inside the page query. */
type EventJson = { eventId: number; version: number; eventTime: string; attributes: Record<string, unknown> };

/**
 * The sending side of history replication (its counterpart is receiver.ts): serves a
 * pulling peer its namespaces' tasks of one shard, long-polls for new ones, and records
 * the peer's acked_task_id (or, unset, its after_task_id) as its outbound ack.
 */
export function createReplicationSender({ db, cluster, notifier, maxWaitMs = 20_000, recheckMs = 1000, ackSaveIntervalMs }: ReplicationSenderDeps) {
  const acks = createOutboundAckRecorder({ db, notifier, intervalMs: ackSaveIntervalMs });
  // Ends long polls at shutdown, before the database closes under them.
  const closing = new AbortController();
  const inflight = new Set<Promise<unknown>>();

  /** Refuses a peer this cluster does not know or has disabled: a disabled connection pauses both ways. */
  async function checkPeer(name: string): Promise<void> {
    const [row] = await runStatement(db, PEER_TEXT, [name]);
    if (!row) throw failedPrecondition(`cluster ${name} is not connected to ${cluster.clusterName}; add it there with cluster upsert`);
    if (!row.enabled) throw failedPrecondition(`replication with cluster ${name} is disabled on ${cluster.clusterName}`);
  }

  /**
   * Tasks after `after` and at or below the bound (the shard counter, or `max` once known),
   * for peer's namespaces (all with no peer), each with its events and the bound's value,
   * in one statement.
   */
  async function queryTasks(shardId: number, after: number, max: number | undefined, size: number, peer: string, withEvents: boolean) {
    const text = pageText({ counter: max === undefined, peer: Boolean(peer), withEvents });
    const params: unknown[] = [shardId, after, size];
    if (max !== undefined) params.push(max);
    if (peer) params.push(JSON.stringify([peer]));
    const rows = await runStatement(db, text, params);
    return rows.map((r) => ({ task: tasksSql.fromRow(r), max: Number(r.page_max), events: (r.page_events ?? null) as EventJson[] | null }));
  }

  /** One page after `after` and how far it covers (tasks for other clusters are passed over). */
  async function readPage(shardId: number, after: number, size: number, peer: string, withEvents: boolean) {
    // Bounded by the shard counter read in the same statement: every id at or below a
    // committed counter is committed too, so nothing below `last` can still appear.
    let rows = await queryTasks(shardId, after, undefined, size, peer, withEvents);
    let max = rows[0]?.max;
    if (max === undefined) {
      // Nothing wanted: learn the counter first, then look once more below it.
      const [shard] = await runStatement(db, COUNTER_TEXT, [shardId]);
      max = Number(shard?.next ?? 1) - 1;
      rows = await queryTasks(shardId, after, max, size, peer, withEvents);
    }
    const last = rows.length === size ? rows.at(-1)!.task.taskId : max;
    const tasks = await Promise.all(rows.map(async (r) => taskToProto(r.task, withEvents ? await eventsOf(db, r.task, r.events ?? []) : [])));
    return { tasks, max, last: Math.max(last, after) };
  }

  /** AdminService.GetReplicationTasks: a page now, or a long poll until a task commits. */
  function getReplicationTasks(req: GetReplicationTasksRequest, signal?: AbortSignal): Promise<GetReplicationTasksResponse> {
    if (closing.signal.aborted) return Promise.reject(unavailable(`cluster ${cluster.clusterName} is shutting down`));
    const p = serve(req, signal ? AbortSignal.any([signal, closing.signal]) : closing.signal);
    inflight.add(p);
    return p.finally(() => inflight.delete(p));
  }

  async function serve(req: GetReplicationTasksRequest, signal: AbortSignal): Promise<GetReplicationTasksResponse> {
    if (req.shardId < 1 || req.shardId > cluster.historyShardCount) {
      throw invalidArgument(`shard id must be 1..${cluster.historyShardCount}`);
    }
    const size = req.pageSize > 0 ? Math.min(req.pageSize, 1000) : 100;
    const after = Number(req.afterTaskId);
    // A pipelined puller asks past what it applied: only what it says it applied is acked.
    const acked = req.ackedTaskId === undefined ? after : Math.min(Number(req.ackedTaskId), after);
    const deadline = Date.now() + Math.min(Math.max(req.waitTimeoutMs, 0), maxWaitMs);
    if (req.clusterName) await checkPeer(req.clusterName);
    for (;;) {
      // Listen before reading, so a commit between the read and the wait still wakes us.
      const stop = new AbortController();
      const left = deadline - Date.now();
      const woke = left > 0 ? notifier.wait(shardKey(req.shardId), Math.min(left, recheckMs), AbortSignal.any([signal, stop.signal])) : undefined;
      const [page] = await Promise.all([
        readPage(req.shardId, after, size, req.clusterName, req.includeEvents),
        req.clusterName ? acks.record(req.clusterName, req.shardId, acked) : undefined,
      ]);
      if (page.tasks.length || !woke || signal.aborted) {
        stop.abort();
        return create(GetReplicationTasksResponseSchema, { tasks: page.tasks, maxTaskId: BigInt(page.max), lastTaskId: BigInt(page.last) });
      }
      await woke;
    }
  }

  return {
    getReplicationTasks,
    /** Ends open long polls and refuses new ones; resolves once none runs. */
    async stop(): Promise<void> {
      closing.abort();
      await Promise.allSettled([...inflight]);
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

function taskToProto(t: TaskRow, events: HistoryEvent[]): MessageInitShape<typeof ReplicationTaskSchema> {
  return {
    shardId: t.shardId,
    taskId: BigInt(t.taskId),
    namespaceId: t.namespaceId,
    workflowId: t.workflowId,
    runId: t.runId,
    firstEventId: BigInt(t.firstEventId),
    nextEventId: BigInt(t.nextEventId),
    version: BigInt(t.version),
    versionHistory: versionHistoryToProto(t.versionHistory),
    createTime: timestampFromDate(t.createdAt),
    events,
  };
}

const tasksSql = tableCodec(replicationTasks);
const eventsSql = tableCodec(historyEvents);
const shardsSql = tableCodec(shards);
const namespacesSql = tableCodec(namespaces);
const peersSql = tableCodec(clusterMetadata);

const PEER_TEXT =
  `select ${peersSql.name("enableConnection")} as enabled from ${peersSql.table} ` +
  `where ${peersSql.name("clusterName")} = $1 and ${peersSql.name("isCurrent")} = false`;
const COUNTER_TEXT = `select ${shardsSql.name("nextTaskId")} as next from ${shardsSql.table} where ${shardsSql.name("shardId")} = $1`;

/**
 * The page statement of one shape. $1 shard, $2 after, $3 page size, then the bound
 * when given ($4), then the peer as a jsonb array.
 */
const pageText = textCache((shape: { counter: boolean; peer: boolean; withEvents: boolean }) => {
  const t = (k: Parameters<typeof tasksSql.name>[0]) => `t.${tasksSql.name(k)}`;
  const e = (k: Parameters<typeof eventsSql.name>[0]) => `ev.${eventsSql.name(k)}`;
  const bound = shape.counter
    ? `(select ${shardsSql.name("nextTaskId")} - 1 from ${shardsSql.table} where ${shardsSql.name("shardId")} = $1)`
    : "$4::bigint";
  const peerParam = shape.counter ? "$4" : "$5";
  const events = shape.withEvents
    ? `(select json_agg(json_build_object('eventId', ${e("eventId")}, 'version', ${e("version")}, 'eventTime', ${e("eventTime")}, ` +
      `'attributes', ${e("attributes")}) order by ${e("eventId")}) from ${eventsSql.table} ev ` +
      `where ${e("namespaceId")} = ${t("namespaceId")} and ${e("workflowId")} = ${t("workflowId")} and ${e("runId")} = ${t("runId")} ` +
      `and ${e("eventId")} >= ${t("firstEventId")} and ${e("eventId")} < ${t("nextEventId")} and ${e("version")} = ${t("version")})`
    : "null";
  const wanted = shape.peer
    ? ` and exists (select 1 from ${namespacesSql.table} ns where ns.${namespacesSql.name("id")} = ${t("namespaceId")} ` +
      `and ns.${namespacesSql.name("clusters")} @> ${peerParam}::jsonb)`
    : "";
  return `select ${tasksSql.all.split(", ").map((c) => `t.${c}`).join(", ")}, ${bound} as page_max, ${events} as page_events ` +
    `from ${tasksSql.table} t where ${t("shardId")} = $1 and ${t("taskId")} > $2 and ${t("taskId")} <= ${bound}${wanted} ` +
    `order by ${t("taskId")} limit $3`;
}, (shape) => `${shape.counter}/${shape.peer}/${shape.withEvents}`);
