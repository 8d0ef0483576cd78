import { and, eq, sql } from "drizzle-orm";
import type { Db, Tx } from "../src/persistence/database";
import { namespaceReplicationTasks, namespaces, queueCounters, replicationAckLevels } from "../src/persistence/schema";

type NamespaceRow = typeof namespaces.$inferSelect;

/** The counter row of the namespace queue in queue_counters. */
export const NAMESPACE_QUEUE = "namespace";

/** A namespace replication task as stored: the namespace after the change, plus the clusters it listed before. */
export type StoredNamespace = Omit<NamespaceRow, "createdAt" | "updatedAt"> & {
  createdAt: string;
  updatedAt: string;
  previousClusters: string[];
};

/**
 * Appends a namespace replication task inside the caller's transaction. The counter
 * row's lock is held until commit, so ids are gap-free and commit in id order: a
 * reader that sees task n has seen every task below it.
 */
export async function appendNamespaceTask(tx: Tx, ns: NamespaceRow, previousClusters: string[]): Promise<number> {
  const [row] = await tx
    .insert(queueCounters)
    .values({ queue: NAMESPACE_QUEUE, nextId: 2 })
    .onConflictDoUpdate({ target: queueCounters.queue, set: { nextId: sql`${queueCounters.nextId} + 1` } })
    .returning({ taskId: sql<number>`${queueCounters.nextId} - 1` });
  const taskId = Number(row!.taskId);
  // HANDOVER is local to the cluster running a graceful failover: never replicated.
  const stored: StoredNamespace = {
    ...ns,
    replicationState: "NORMAL",
    createdAt: ns.createdAt.toISOString(),
    updatedAt: ns.updatedAt.toISOString(),
    previousClusters,
  };
  await tx.insert(namespaceReplicationTasks).values({ taskId, namespaceId: ns.id, namespace: stored });
  return taskId;
}

/**
 * In the transaction that connects remote (its first upsert, or one after a remove): each global
 * namespace active here queued again as it stands, for remote too. A cluster removed while it
 * was down kept its copies, and the tasks that took it out of their clusters were cleaned up
 * once the remaining remotes acked them: without this its copies stayed as they were, listing
 * it, and a forced failover to it there was taken, then spread as the config of the higher
 * failover version. Receivers that hold the namespace as it stands skip it (same config version).
 */
export async function resendNamespacesTo(tx: Tx, remote: string, here: string): Promise<void> {
  const rows = await tx.select().from(namespaces).where(and(eq(namespaces.isGlobal, true), eq(namespaces.activeClusterName, here)));
  for (const ns of rows) await appendNamespaceTask(tx, ns, ns.clusters.includes(remote) ? ns.clusters : [...ns.clusters, remote]);
}

/** The highest committed namespace task id (0 when none). */
export async function namespaceQueueMax(db: Db | Tx): Promise<number> {
  const [row] = await db.select({ nextId: queueCounters.nextId }).from(queueCounters).where(eq(queueCounters.queue, NAMESPACE_QUEUE));
  return row ? Number(row.nextId) - 1 : 0;
}

/** Key of one replication position in replication_ack_levels. */
export interface AckKey {
  remote: string;
  direction: "inbound" | "outbound";
  queue: "history" | "namespace";
  shardId: number;
}

/** Reads one replication position (0 when never recorded). */
export async function readAckLevel(db: Db | Tx, k: AckKey): Promise<number> {
  return (await readAck(db, k)).ackLevel;
}

/**
 * One replication position and when it was last written (unset when never): an outbound
 * namespace position is written at every poll the remote makes here (namespace-sender.ts).
 */
export async function readAck(db: Db | Tx, k: AckKey): Promise<{ ackLevel: number; updatedAt?: Date }> {
  const [row] = await db
    .select({ ackLevel: replicationAckLevels.ackLevel, updatedAt: replicationAckLevels.updatedAt })
    .from(replicationAckLevels)
    .where(
      and(
        eq(replicationAckLevels.remoteCluster, k.remote),
        eq(replicationAckLevels.direction, k.direction),
        eq(replicationAckLevels.queue, k.queue),
        eq(replicationAckLevels.shardId, k.shardId),
      ),
    );
  return row ? { ackLevel: Number(row.ackLevel), updatedAt: row.updatedAt } : { ackLevel: 0 };
}

/** Moves a replication position forward only: a late or repeated writer never moves it back. */
export async function advanceAckLevel(db: Db | Tx, k: AckKey, ackLevel: number, maxTaskId: number, appliedAt?: Date): Promise<void> {
  const now = new Date();
  await db
    .insert(replicationAckLevels)
    .values({
      remoteCluster: k.remote,
      direction: k.direction,
      queue: k.queue,
      shardId: k.shardId,
      ackLevel,
      maxTaskId,
      lastAppliedCreatedAt: appliedAt,
      updatedAt: now,
    })
    .onConflictDoUpdate({
      target: [replicationAckLevels.remoteCluster, replicationAckLevels.direction, replicationAckLevels.queue, replicationAckLevels.shardId],
      set: {
        ackLevel: sql`greatest(${replicationAckLevels.ackLevel}, excluded.ack_level)`,
        maxTaskId: sql`greatest(${replicationAckLevels.maxTaskId}, excluded.max_task_id)`,
        lastAppliedCreatedAt: sql`coalesce(excluded.last_applied_created_at, ${replicationAckLevels.lastAppliedCreatedAt})`,
        updatedAt: now,
      },
    });
}
