import { eq, sql } from "drizzle-orm";
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
 * Writes the replication task inside the caller's transaction. The task id comes from
 * the shard row, whose lock also orders the shard's writes: a reader never sees task
 * n+1 committed before task n.
 */
export async function appendReplicationTask(tx: Tx, task: ReplicationTaskInput): Promise<number> {
  const [row] = await tx
    .update(shards)
    .set({ nextTaskId: sql`${shards.nextTaskId} + 1` })
    .where(eq(shards.shardId, task.shardId))
    .returning({ taskId: sql<number>`${shards.nextTaskId} - 1` });
  if (!row) throw new Error(`shard ${task.shardId} does not exist`);
  const taskId = Number(row.taskId);
  await tx.insert(replicationTasks).values({ ...task, taskId });
  return taskId;
}
