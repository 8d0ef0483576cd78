import { sql } from "drizzle-orm";
import type { Tx } from "../src/persistence/database";
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
export async function appendReplicationTask(tx: Tx, task: ReplicationTaskInput): Promise<number> {
  const t = replicationTasks;
  const col = (c: { name: string }) => sql.identifier(c.name);
  const result = await tx.execute(sql`
    with next as (
      update ${shards} set ${col(shards.nextTaskId)} = ${col(shards.nextTaskId)} + 1
      where ${col(shards.shardId)} = ${task.shardId}
      returning ${col(shards.nextTaskId)} - 1 as task_id
    )
    insert into ${t} (${col(t.shardId)}, ${col(t.taskId)}, ${col(t.namespaceId)}, ${col(t.workflowId)}, ${col(t.runId)},
      ${col(t.firstEventId)}, ${col(t.nextEventId)}, ${col(t.version)}, ${col(t.versionHistory)})
    select ${task.shardId}, task_id, ${task.namespaceId}, ${task.workflowId}, ${task.runId},
      ${task.firstEventId}, ${task.nextEventId}, ${task.version}, ${JSON.stringify(task.versionHistory)}::jsonb
    from next
    returning ${col(t.taskId)} as task_id`);
  const [row] = rowsOf<{ task_id: number | string }>(result);
  if (!row) throw new Error(`shard ${task.shardId} does not exist`);
  return Number(row.task_id);
}

/** The rows of a raw statement's result: postgres.js returns them as the result, PGlite under rows. */
function rowsOf<T>(result: unknown): T[] {
  return ((result as { rows?: T[] }).rows ?? (result as T[])) as T[];
}
