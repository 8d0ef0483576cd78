import { asc } from "drizzle-orm";
import type { Db, Tx } from "../src/persistence/database";
import { composite, paddedChunks, padRows, runStatement, tableCodec, textCache, valuesList, type DriverRow, type StatementPart } from "../src/persistence/raw-statements";
import { replicationTasks, shards, type VersionHistoryItem } from "../src/persistence/schema";

/** What changed in one execution write, for the passive clusters (DESIGN.md section 3). */
export interface ReplicationTaskInput {
  shardId: number;
  namespaceId: string;
  workflowId: string;
  runId: string;
  firstEventId: number;
  nextEventId: number;
  version: number;
  versionHistory: VersionHistoryItem[];
  /** The events' estimated size (estimateEventBytes): a page read's byte budget counts it before rendering them. */
  eventBytes: number;
}

/** Each shard's last task id (0 for a shard without tasks), by shard id in ascending order: the shard counter's next id less one. */
export async function lastTaskIds(db: Db | Tx): Promise<Map<number, number>> {
  const rows = await db.select({ shardId: shards.shardId, next: shards.nextTaskId }).from(shards).orderBy(asc(shards.shardId));
  return new Map(rows.map((r) => [r.shardId, Number(r.next) - 1]));
}

/**
 * Writes the replication task inside the caller's transaction, in one statement. The task
 * id comes from the shard row, whose lock also orders the shard's writes: a reader never
 * sees task n+1 committed before task n.
 */
export function appendReplicationTask(tx: Tx, task: ReplicationTaskInput): Promise<{ taskId: number; createdAt: Date }> {
  const { text, params } = composite([replicationTaskPart(task)]);
  return runStatement(tx, text, params).then(([row]) => replicationTaskOf(task, row));
}

/**
 * appendReplicationTask as a part of a composite statement, written once the statement's
 * expression named after (if any) has returned a row, so its write and locks come first;
 * replicationTaskOf reads the task's id and time from the statement's row. Its parameters
 * are prepared here, before any statement goes out (see pipelined-tx.ts).
 */
export function replicationTaskPart(task: ReplicationTaskInput, after?: string): StatementPart {
  const params = [
    task.shardId, task.namespaceId, task.workflowId, task.runId, task.firstEventId, task.nextEventId, task.version,
    t.param("versionHistory", task.versionHistory), task.eventBytes,
  ];
  return { ctes: appendCtes(after ?? ""), columns: APPEND_COLUMNS, params };
}

/** The task id and time a statement with replicationTaskPart gave task. */
export function replicationTaskOf(task: ReplicationTaskInput, row: DriverRow | undefined): { taskId: number; createdAt: Date } {
  if (row?.task_id === null || row?.task_id === undefined) throw new Error(`shard ${task.shardId} does not exist`);
  const { taskId, createdAt } = t.fromRow(row);
  return { taskId, createdAt };
}

/**
 * appendReplicationTask for several tasks, in a statement per shard (per 1,024 of its tasks),
 * issued in shard order, so two writes of many shards take their shard rows in one order: a
 * batch of fires took a statement per task. Each shard's tasks take consecutive ids, in the
 * order given. Resolves to each task's id and time, in the order given.
 */
export function appendReplicationTasks(tx: Tx, tasks: ReplicationTaskInput[]): Promise<{ taskId: number; createdAt: Date }[]> {
  const byShard = new Map<number, number[]>();
  tasks.forEach((task, i) => {
    if (!byShard.has(task.shardId)) byShard.set(task.shardId, []);
    byShard.get(task.shardId)!.push(i);
  });
  const out: { taskId: number; createdAt: Date }[] = new Array(tasks.length);
  const statements = [...byShard].sort(([a], [b]) => a - b).flatMap(([shardId, indexes]) => paddedChunks(indexes).map(({ chunk, rows }) => {
    const params = [...padRows(chunk.flatMap((i, ord) => manyRowParams(ord, tasks[i]!)), rows, MANY_WIDTH), shardId, chunk.length];
    return runStatement(tx, appendManyText(rows), params).then((found) => {
      if (found.length !== chunk.length) throw new Error(`shard ${shardId} does not exist`);
      // A shard's tasks took its ids in their order: the k-th lowest id is the k-th task's.
      const written = found.map((row) => t.fromRow(row)).sort((a, b) => a.taskId - b.taskId);
      written.forEach(({ taskId, createdAt }, ord) => (out[chunk[ord]!] = { taskId, createdAt }));
    });
  }));
  return Promise.all(statements).then(() => out);
}

const t = tableCodec(replicationTasks);
const s = tableCodec(shards);
const appendCtes = textCache((after: string): StatementPart["ctes"] => [
  ["next_task", `update ${s.table} set ${s.name("nextTaskId")} = ${s.name("nextTaskId")} + 1 where ${s.name("shardId")} = $1` +
    `${after ? ` and exists (select 1 from ${after})` : ""} returning ${s.name("nextTaskId")} - 1 as task_id`],
  ["task", `insert into ${t.table} (${t.name("shardId")}, ${t.name("taskId")}, ${t.name("namespaceId")}, ${t.name("workflowId")}, ${t.name("runId")}, ` +
    `${t.name("firstEventId")}, ${t.name("nextEventId")}, ${t.name("version")}, ${t.name("versionHistory")}, ${t.name("eventBytes")}) ` +
    `select $1, task_id, $2, $3, $4, $5, $6, $7, $8::jsonb, $9 from next_task ` +
    `returning ${t.name("taskId")} as task_id, ${t.name("createdAt")} as created_at`],
]);
const APPEND_COLUMNS = [["task_id", "(select task_id from task)"], ["created_at", "(select created_at from task)"]] as const;

const MANY_COLUMNS = ["ord", "namespace_id", "workflow_id", "run_id", "first_event_id", "next_event_id", "version", "version_history", "event_bytes"] as const;
const MANY_WIDTH = MANY_COLUMNS.length;
const manyRowParams = (ord: number, task: ReplicationTaskInput) => [
  ord, task.namespaceId, task.workflowId, task.runId, task.firstEventId, task.nextEventId, task.version, t.param("versionHistory", task.versionHistory), task.eventBytes,
];
// Written for paddedRows(n) tasks: the null rows after the n are passed over; then the shard and n.
const appendManyText = textCache((rows: number) => {
  const types = ["int", "text", "text", "text", "bigint", "bigint", "bigint", "jsonb", "int"];
  const [shard, n] = [`$${rows * MANY_WIDTH + 1}::int`, `$${rows * MANY_WIDTH + 2}::bigint`];
  const v = (c: (typeof MANY_COLUMNS)[number]) => `v.${c}`;
  return `with next_task as (update ${s.table} set ${s.name("nextTaskId")} = ${s.name("nextTaskId")} + ${n} where ${s.name("shardId")} = ${shard} ` +
    `returning ${s.name("nextTaskId")} - ${n} as first_id) ` +
    `insert into ${t.table} (${t.name("shardId")}, ${t.name("taskId")}, ${t.name("namespaceId")}, ${t.name("workflowId")}, ${t.name("runId")}, ` +
    `${t.name("firstEventId")}, ${t.name("nextEventId")}, ${t.name("version")}, ${t.name("versionHistory")}, ${t.name("eventBytes")}) ` +
    `select ${shard}, first_id + ${v("ord")}, ${MANY_COLUMNS.slice(1).map(v).join(", ")} from next_task, ` +
    `(values ${valuesList(rows, MANY_WIDTH, types)}) as v(${MANY_COLUMNS.join(", ")}) ` +
    `where ${v("ord")} is not null returning ${t.name("taskId")} as task_id, ${t.name("createdAt")} as created_at`;
});

/**
 * The highest replication task id known committed per shard, in this process: from its
 * own commits and from the counter each page read sees. A long poll already past it
 * waits for the next commit without reading first (writers in other processes are seen
 * at the sender's periodic re-read).
 */
export function createOutboxMarks() {
  const marks = new Map<number, number>();
  /** The marks' sum, kept as they move: summary() is one number, however many shards. */
  let total = 0;
  /** Each open watch's shards moved since it last took them. */
  const watches = new Set<Set<number>>();
  return {
    /** taskId 0: the shard has no task yet, which is known too (else such a shard was read at every poll). */
    advance(shardId: number, taskId: number): void {
      const was = marks.get(shardId);
      if (taskId <= (was ?? -1)) return;
      marks.set(shardId, taskId);
      total += taskId - (was ?? 0);
      for (const moved of watches) moved.add(shardId);
    },
    latest: (shardId: number): number | undefined => marks.get(shardId),
    /**
     * How many shards have a mark, and the marks' sum. Each mark is at most its shard's counter, so
     * counters of as many shards adding up to the same sum are each at their mark: nothing has
     * committed past any (page-reader.ts, marksHold).
     */
    summary: (): { shards: number; total: number } => ({ shards: marks.size, total }),
    /**
     * Collects the shards whose mark moves from now on, until closed: a stream of many shards
     * looks again only at those (and its own unfinished ones), not at every shard per message.
     */
    watch() {
      const moved = new Set<number>();
      watches.add(moved);
      return {
        /** The shards moved since the last take, in no order. */
        take(): number[] {
          const out = [...moved];
          moved.clear();
          return out;
        },
        close: () => void watches.delete(moved),
      };
    },
    /** How many watches are open (tests, diagnostics): a stream that ended has closed its own. */
    watching: () => watches.size,
  };
}

export type OutboxMarks = ReturnType<typeof createOutboxMarks>;
