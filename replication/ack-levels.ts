import { and, eq, sql } from "drizzle-orm";
import type { EventNotifier } from "../src/history/notifier";
import type { Db, Tx } from "../src/persistence/database";
import { replicationAckLevels } from "../src/persistence/schema";
import { RetryableReplicationError } from "./applier";

/** Notifier key woken whenever a remote's outbound ack moves (graceful failover waits on it). */
export const ackKey = (remoteCluster: string) => `ack:${remoteCluster}`;

/** Notifier key woken after a replication task of a shard commits (the sender's long poll). */
export const shardKey = (shardId: number) => `shard:${shardId}`;

const history = (remoteCluster: string, direction: "inbound" | "outbound") =>
  and(
    eq(replicationAckLevels.remoteCluster, remoteCluster),
    eq(replicationAckLevels.direction, direction),
    eq(replicationAckLevels.queue, "history"),
  );

/** How far remoteCluster acked this cluster's history tasks, per local shard (absent: nothing acked). */
export async function outboundAcks(db: Db, remoteCluster: string): Promise<Map<number, number>> {
  const rows = await db
    .select({ shardId: replicationAckLevels.shardId, ackLevel: replicationAckLevels.ackLevel })
    .from(replicationAckLevels)
    .where(history(remoteCluster, "outbound"));
  return new Map(rows.map((r) => [r.shardId, r.ackLevel]));
}

/** Resolves when remoteCluster's outbound ack moves in this process, or after timeoutMs. */
export function waitForAckChange(notifier: EventNotifier, remoteCluster: string, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  return notifier.wait(ackKey(remoteCluster), timeoutMs, signal);
}

/** Records the ack a pulling peer sent; the peer is the only writer of its own position. */
export async function saveOutboundAck(db: Db, remoteCluster: string, shardId: number, ackLevel: number): Promise<void> {
  await db
    .insert(replicationAckLevels)
    .values({ remoteCluster, direction: "outbound", queue: "history", shardId, ackLevel })
    .onConflictDoUpdate({
      target: [replicationAckLevels.remoteCluster, replicationAckLevels.direction, replicationAckLevels.queue, replicationAckLevels.shardId],
      set: { ackLevel, updatedAt: sql`now()` },
    });
}

/** This cluster's applied position in remoteCluster's shard, creating the row at 0 on first use. */
export async function loadInboundAck(db: Db, remoteCluster: string, shardId: number): Promise<number> {
  await db
    .insert(replicationAckLevels)
    .values({ remoteCluster, direction: "inbound", queue: "history", shardId })
    .onConflictDoNothing();
  const [row] = await db
    .select({ ackLevel: replicationAckLevels.ackLevel })
    .from(replicationAckLevels)
    .where(and(history(remoteCluster, "inbound"), eq(replicationAckLevels.shardId, shardId)));
  return row!.ackLevel;
}

/** The inbound ack rows of every remote, for status. */
export async function inboundAckRows(db: Db) {
  return db.select().from(replicationAckLevels).where(eq(replicationAckLevels.direction, "inbound"));
}

/**
 * Moves the inbound ack from `from` to `to` inside the apply transaction. It compares
 * the old value, so two processes applying the same shard cannot both commit.
 */
export async function advanceInboundAck(
  tx: Tx,
  remoteCluster: string,
  shardId: number,
  move: { from: number; to: number; maxTaskId: number; lastAppliedCreatedAt?: Date },
): Promise<void> {
  const rows = await tx
    .update(replicationAckLevels)
    .set({
      ackLevel: move.to,
      maxTaskId: move.maxTaskId,
      ...(move.lastAppliedCreatedAt ? { lastAppliedCreatedAt: move.lastAppliedCreatedAt } : {}),
      updatedAt: sql`now()`,
    })
    .where(and(history(remoteCluster, "inbound"), eq(replicationAckLevels.shardId, shardId), eq(replicationAckLevels.ackLevel, move.from)))
    .returning({ shardId: replicationAckLevels.shardId });
  if (rows.length !== 1) {
    throw new RetryableReplicationError(`inbound ack of ${remoteCluster} shard ${shardId} moved from ${move.from} concurrently (another process applies it)`);
  }
}
