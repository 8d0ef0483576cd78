import { and, eq, lt, lte } from "drizzle-orm";
import type { Logger } from "../src/observability/log";
import { createPeriodic } from "../src/periodic";
import type { Db } from "../src/persistence/database";
import { clusterMetadata, namespaceReplicationTasks, replicationAckLevels, replicationTasks, shards } from "../src/persistence/schema";

export interface ReplicationCleanupDeps {
  db: Db;
  log: Logger;
  intervalMs?: number;
  /** With no remote cluster, tasks older than this are deleted (a remote added later repairs through raw history). */
  graceMs?: number;
  now?: () => Date;
}

/**
 * Deletes history and namespace replication tasks every known remote acked: per shard, at or below
 * the minimum outbound ack over all remotes, enabled or not (a disabled connection keeps
 * its position, so its tasks stay).
 */
export function createReplicationCleanup({ db, log, intervalMs = 10_000, graceMs = 60_000, now = () => new Date() }: ReplicationCleanupDeps) {
  /** One pass; returns how many tasks it deleted. */
  async function runOnce(): Promise<number> {
    const remotes = await db.select({ name: clusterMetadata.clusterName }).from(clusterMetadata).where(eq(clusterMetadata.isCurrent, false));
    if (remotes.length === 0) {
      const before = new Date(now().getTime() - graceMs);
      const gone = await db.delete(replicationTasks).where(lt(replicationTasks.createdAt, before)).returning({ id: replicationTasks.taskId });
      await db.delete(namespaceReplicationTasks).where(lt(namespaceReplicationTasks.createdAt, before));
      return gone.length;
    }
    const [shardRows, acks] = await Promise.all([
      db.select({ shardId: shards.shardId }).from(shards),
      db
        .select()
        .from(replicationAckLevels)
        .where(eq(replicationAckLevels.direction, "outbound")),
    ]);
    const ackOf = (queue: string, remote: string, shardId: number) =>
      acks.find((a) => a.queue === queue && a.remoteCluster === remote && a.shardId === shardId)?.ackLevel ?? 0;
    const nsMin = Math.min(...remotes.map((r) => ackOf("namespace", r.name, 0)));
    if (nsMin > 0) await db.delete(namespaceReplicationTasks).where(lte(namespaceReplicationTasks.taskId, nsMin));
    let deleted = 0;
    for (const { shardId } of shardRows) {
      // A remote without an ack row for the shard has acked nothing: it holds everything.
      const levels = remotes.map((r) => ackOf("history", r.name, shardId));
      const min = Math.min(...levels);
      if (min <= 0) continue;
      const gone = await db
        .delete(replicationTasks)
        .where(and(eq(replicationTasks.shardId, shardId), lte(replicationTasks.taskId, min)))
        .returning({ id: replicationTasks.taskId });
      deleted += gone.length;
    }
    return deleted;
  }

  const periodic = createPeriodic(runOnce, {
    intervalMs,
    onDone: (n) => {
      if (n) log.debug("replication tasks cleaned up", { deleted: n });
    },
    onError: (e) => log.warn("replication task cleanup failed", { error: (e as Error).message }),
  });

  return { runOnce, start: periodic.start, stop: periodic.stop };
}

export type ReplicationCleanup = ReturnType<typeof createReplicationCleanup>;
