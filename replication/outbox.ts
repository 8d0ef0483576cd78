import type { Tx } from "../src/persistence/database";
import { runStatement, tableCodec } from "../src/persistence/raw-statements";
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
}

/**
 * Writes the replication task inside the caller's transaction, in one statement. The task
 * id comes from the shard row, whose lock also orders the shard's writes: a reader never
 * sees task n+1 committed before task n.
 */
export function appendReplicationTask(tx: Tx, task: ReplicationTaskInput): Promise<{ taskId: number; createdAt: Date }> {
  // Parameters are prepared before the statement goes out (see pipelined-tx.ts).
  const params = [
    task.shardId, task.namespaceId, task.workflowId, task.runId, task.firstEventId, task.nextEventId, task.version,
    t.param("versionHistory", task.versionHistory),
  ];
  return runStatement(tx, APPEND_TEXT, params).then(([row]) => {
    if (!row) throw new Error(`shard ${task.shardId} does not exist`);
    const { taskId, createdAt } = t.fromRow(row);
    return { taskId, createdAt };
  });
}

const t = tableCodec(replicationTasks);
const s = tableCodec(shards);
const APPEND_TEXT = `
  with next as (
    update ${s.table} set ${s.name("nextTaskId")} = ${s.name("nextTaskId")} + 1
    where ${s.name("shardId")} = $1
    returning ${s.name("nextTaskId")} - 1 as task_id
  )
  insert into ${t.table} (${t.name("shardId")}, ${t.name("taskId")}, ${t.name("namespaceId")}, ${t.name("workflowId")}, ${t.name("runId")},
    ${t.name("firstEventId")}, ${t.name("nextEventId")}, ${t.name("version")}, ${t.name("versionHistory")})
  select $1, task_id, $2, $3, $4, $5, $6, $7, $8::jsonb
  from next
  returning ${t.name("taskId")} as task_id, ${t.name("createdAt")} as created_at`;

/**
 * The highest replication task id known committed per shard, in this process: from its
 * own commits and from the counter each page read sees. A long poll already past it
 * waits for the next commit without reading first (writers in other processes are seen
 * at the sender's periodic re-read).
 */
export function createOutboxMarks() {
  const marks = new Map<number, number>();
  return {
    /** taskId 0: the shard has no task yet, which is known too (else such a shard was read at every poll). */
    advance(shardId: number, taskId: number): void {
      if (taskId > (marks.get(shardId) ?? -1)) marks.set(shardId, taskId);
    },
    latest: (shardId: number): number | undefined => marks.get(shardId),
  };
}

export type OutboxMarks = ReturnType<typeof createOutboxMarks>;
