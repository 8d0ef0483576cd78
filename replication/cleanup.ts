import { and, eq, lt, lte } from "drizzle-orm";
import type { Logger } from "../src/observability/log";
import type { Db } from "../src/persistence/database";
import { clusterMetadata, replicationAckLevels, replicationTasks, shards } from "../src/persistence/schema";

export interface ReplicationCleanupDeps {
  db: Db;
  log: Logger;
  intervalMs?: number;
  /** With no remote cluster, tasks older than this are deleted (a remote added later repairs through raw history). */
  graceMs?: number;
  now?: () => Date;
}

/**
 * Deletes history replication tasks every known remote acked: per shard, at or below
 * the minimum outbound ack over all remotes, enabled or not (a disabled connection keeps
 * its position, so its tasks stay).
 */
export function createReplicationCleanup({ db, log, intervalMs = 10_000, graceMs = 60_000, now = () => new Date() }: ReplicationCleanupDeps) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running: Promise<number> | undefined;
  let stopped = true;

  /** One pass; returns how many tasks it deleted. */
  async function runOnce(): Promise<number> {
    const remotes = await db.select({ name: clusterMetadata.clusterName }).from(clusterMetadata).where(eq(clusterMetadata.isCurrent, false));
    if (remotes.length === 0) {
      const gone = await db.delete(replicationTasks).where(lt(replicationTasks.createdAt, new Date(now().getTime() - graceMs))).returning({ id: replicationTasks.taskId });
      return gone.length;
    }
    const [shardRows, acks] = await Promise.all([
      db.select({ shardId: shards.shardId }).from(shards),
      db
        .select()
        .from(replicationAckLevels)
        .where(and(eq(replicationAckLevels.direction, "outbound"), eq(replicationAckLevels.queue, "history"))),
    ]);
    let deleted = 0;
    for (const { shardId } of shardRows) {
      // A remote without an ack row for the shard has acked nothing: it holds everything.
      const levels = remotes.map((r) => acks.find((a) => a.remoteCluster === r.name && a.shardId === shardId)?.ackLevel ?? 0);
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

  async function tick(): Promise<void> {
    try {
      running = runOnce();
      const n = await running;
      if (n) log.debug("replication tasks cleaned up", { deleted: n });
    } catch (e) {
      log.warn("replication task cleanup failed", { error: (e as Error).message });
    } finally {
      running = undefined;
      if (!stopped) timer = setTimeout(tick, intervalMs);
    }
  }

  return {
    runOnce,
    start(): void {
      stopped = false;
      timer = setTimeout(tick, intervalMs);
    },
    async stop(): Promise<void> {
      stopped = true;
      if (timer) clearTimeout(timer);
      await running?.catch(() => {});
    },
  };
}

export type ReplicationCleanup = ReturnType<typeof createReplicationCleanup>;
