import { failedPrecondition } from "../src/errors";

/**
 * Refuses a puller that does not read cleaned_through_task_id (a tern before it, or
 * GetReplicationTasks, which cannot carry it) a cursor below the tasks this cluster deleted past
 * its ack while it was disabled past its grace (cleanup.ts): it would pass them over silently.
 */
export function refuseUnreadMarks(
  here: string, peer: string, cursors: readonly { shardId: number; after: number }[], cleaned: ReadonlyMap<number, number>,
): void {
  const below = cursors.find((c) => (cleaned.get(c.shardId) ?? 0) > c.after);
  if (!below) return;
  throw failedPrecondition(
    `cluster ${peer}'s cursor in shard ${below.shardId} (after task ${below.after}) is below the replication tasks ${here} deleted ` +
      `while ${peer} was disabled past its grace (through ${cleaned.get(below.shardId)}), and its request does not say it reads that mark: ` +
      `it would miss them. Upgrade ${peer} to a tern that reads it: that backfills them from ${here} and goes on`,
  );
}
