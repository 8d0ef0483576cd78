import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { HistoryEventSchema, type HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import type { ReplicationTaskSchema } from "../src/gen/tern/admin/v1/service_pb";
import { eventTypeOf, type EventAttributes } from "../src/history/events";
import type { replicationTasks } from "../src/persistence/schema";
import type { ReplicationTaskInput } from "./outbox";
import { versionHistoryToProto } from "./version-history";

/** A replication task as its transaction wrote it, with the events it carries. */
export interface CommittedTask extends ReplicationTaskInput {
  taskId: number;
  createdAt: Date;
  /** The namespace's clusters when the task was written: who may be sent it from here. */
  clusters: readonly string[];
  eventTime: Date;
  /** Events firstEventId, firstEventId + 1, ... in order. */
  events: readonly { attributes: EventAttributes }[];
}

export type TaskInit = MessageInitShape<typeof ReplicationTaskSchema>;

interface Entry {
  task: CommittedTask;
  bytes: number;
  at: number;
  /** The task as a page carries it, built when first served. */
  proto?: TaskInit;
}

export interface OutboxTailOptions {
  /** This cluster: a task is let go once every other cluster of its namespace has asked past it. */
  currentCluster: string;
  /** Most bytes (payload estimate) held over all shards. */
  maxBytes?: number;
  /** Longest a task is held: a peer later than this reads it from the database. */
  maxAgeMs?: number;
  now?: () => number;
}

/**
 * The replication tasks this process committed lately, with their events, per shard: a
 * caught-up peer's long poll is answered from here instead of reading the page back from
 * the database (the read that used to sit between a commit and its send). It serves a
 * page only when it holds every task id after the peer's position without a hole, so a
 * task committed by another process on the same database, or one it never heard of,
 * sends the poll to the database as before; and only tasks of namespaces whose clusters
 * included the peer when they were written (the database decides every skip).
 *
 * Where the two answers can differ: a peer removed from a namespace's clusters (or the
 * namespace deleted) just after a write may still be sent that write's task from here,
 * which a database page read after the change would pass over. That is the answer a
 * database page read just before the change gives, so the peer gets nothing it could not
 * have got anyway. A write stamped with a namespace record the registry cached before such
 * a change made by another process widens that window to the registry's cache time (2 s).
 */
export function createOutboxTail({ currentCluster, maxBytes = 16 << 20, maxAgeMs = 5_000, now = Date.now }: OutboxTailOptions) {
  const shards = new Map<number, Map<number, Entry>>();
  /** Every entry, oldest first: evicted from the front. */
  const order = new Map<string, Entry>();
  /** Per shard, the position each peer last asked after: it will not ask for what lies below again. */
  const asked = new Map<number, Map<string, number>>();
  let bytes = 0;

  function drop(e: Entry): void {
    order.delete(`${e.task.shardId}/${e.task.taskId}`);
    shards.get(e.task.shardId)?.delete(e.task.taskId);
    bytes -= e.bytes;
  }

  function evict(): void {
    const oldest = now() - maxAgeMs;
    for (const e of order.values()) {
      if (bytes <= maxBytes && e.at >= oldest) break;
      drop(e);
    }
  }

  return {
    /** Holds tasks whose transaction committed. */
    committed(tasks: Iterable<CommittedTask>): void {
      const at = now();
      for (const task of tasks) {
        let shard = shards.get(task.shardId);
        if (!shard) shards.set(task.shardId, (shard = new Map()));
        const entry: Entry = { task, bytes: estimateBytes(task), at };
        shard.set(task.taskId, entry);
        order.set(`${task.shardId}/${task.taskId}`, entry);
        bytes += entry.bytes;
      }
      evict();
    },

    /**
     * Up to `size` tasks after `after` for peer, and the last id they cover; undefined when
     * the task after `after` is not held or one of the run belongs to a namespace the peer
     * was not in (the database page decides those). Tasks stop once those taken hold
     * maxBytes (estimated), the first always taken.
     */
    page(shardId: number, after: number, size: number, peer: string, maxBytes = Infinity): { tasks: TaskInit[]; last: number } | undefined {
      evict();
      const shard = shards.get(shardId);
      if (!shard) return undefined;
      const tasks: TaskInit[] = [];
      let taken = 0;
      let id = after + 1;
      for (let e = shard.get(id); e && tasks.length < size && taken < maxBytes; e = shard.get(++id)) {
        if (!e.task.clusters.includes(peer)) return undefined;
        tasks.push((e.proto ??= toProto(e.task)));
        taken += e.bytes;
      }
      return tasks.length ? { tasks, last: id - 1 } : undefined;
    },

    /**
     * peer asked for shardId's tasks after `after`: the shard's oldest tasks that every other
     * cluster of their namespace has asked past are let go (the others wait out the age limit).
     */
    passed(shardId: number, peer: string, after: number): void {
      let peers = asked.get(shardId);
      if (!peers) asked.set(shardId, (peers = new Map()));
      if (after <= (peers.get(peer) ?? 0)) return;
      peers.set(peer, after);
      for (const e of shards.get(shardId)?.values() ?? []) {
        const done = e.task.clusters.every((c) => c === currentCluster || (peers.get(c) ?? 0) >= e.task.taskId);
        if (!done) break;
        drop(e);
      }
    },

    /** Bytes held, for tests and metrics. */
    size: () => ({ tasks: order.size, bytes }),
  };
}

export type OutboxTail = ReturnType<typeof createOutboxTail>;

/** A task row (stored, or as committed here) and its events as a page carries them. */
export function taskToProto(t: typeof replicationTasks.$inferSelect, events: HistoryEvent[]): TaskInit {
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

/** The task as the database page gives it: its events built as eventFromRow builds them from stored rows. */
function toProto(t: CommittedTask): TaskInit {
  const eventTime = timestampFromDate(t.eventTime);
  const events: HistoryEvent[] = t.events.map((e, i) =>
    create(HistoryEventSchema, {
      eventId: BigInt(t.firstEventId + i),
      version: BigInt(t.version),
      eventTime,
      eventType: eventTypeOf(e.attributes),
      attributes: e.attributes,
    }),
  );
  return taskToProto(t, events);
}

/** A cheap size estimate of a task: its strings and byte arrays, walked without serialising. */
function estimateBytes(t: CommittedTask): number {
  return 200 + t.workflowId.length + t.runId.length + t.versionHistory.length * 16 + t.eventBytes;
}

/** A cheap size estimate of events (their attributes' strings and byte arrays), as a task carries them. */
export function estimateEventBytes(events: readonly { attributes: EventAttributes }[]): number {
  let n = 0;
  for (const e of events) n += 64 + sizeOf(e.attributes.value, 0);
  return n;
}

function sizeOf(v: unknown, depth: number): number {
  if (typeof v === "string") return v.length;
  if (v instanceof Uint8Array) return v.byteLength;
  if (typeof v !== "object" || v === null || depth > 12) return 8;
  let n = 8;
  if (Array.isArray(v)) for (const x of v) n += sizeOf(x, depth + 1);
  else for (const k in v) n += k.length + sizeOf((v as Record<string, unknown>)[k], depth + 1);
  return n;
}
