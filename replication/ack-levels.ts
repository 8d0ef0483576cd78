import { and, eq, sql } from "drizzle-orm";
import { listen, type EventNotifier, type Listening } from "../src/history/notifier";
import type { Db, Tx } from "../src/persistence/database";
import { runGuard, tableCodec } from "../src/persistence/raw-statements";
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

/** Notifier key of a waiter that wants remoteCluster's outbound acks saved now, not after the debounce. */
export const ackDemandKey = (remoteCluster: string) => `ack-demand:${remoteCluster}`;

/**
 * Listens for remoteCluster's outbound ack to move in this process (see listen: start it
 * before reading the acks). It also asks the sender to save the acks it holds back
 * (createOutboundAckRecorder), so a graceful failover waiting here sees them at once.
 */
export function listenForAckChange(notifier: EventNotifier, remoteCluster: string, timeoutMs: number, signal?: AbortSignal): Listening {
  const listening = listen(notifier, ackKey(remoteCluster), timeoutMs, signal);
  notifier.notify(ackDemandKey(remoteCluster));
  return listening;
}

/** One peer shard's outbound ack: what is saved, and what arrived since. */
interface AckSlot {
  peer: string;
  shardId: number;
  saved?: number;
  savedAt: number;
  pending?: number;
  timer?: ReturnType<typeof setTimeout>;
  /** Saves of one slot run one after another, so the stored ack never goes back. */
  chain: Promise<void>;
}

/**
 * Saves the acks pulling peers send with every poll, at most once per intervalMs per peer
 * shard (the last one received wins; a held-back ack is saved when the interval ends).
 * A stored ack that lags a little is safe: cleanup then keeps tasks longer, status shows
 * an older position. A graceful failover that waits for a peer (listenForAckChange) gets its
 * held-back acks saved at once, and every ack of that peer saved on arrival for
 * demandWindowMs after.
 */
export function createOutboundAckRecorder({ db, notifier, intervalMs = 250, demandWindowMs = 2_000 }: {
  db: Db;
  notifier: EventNotifier;
  intervalMs?: number;
  demandWindowMs?: number;
}) {
  const slots = new Map<string, AckSlot>();
  const demandedUntil = new Map<string, number>();
  const closing = new AbortController();

  /** Waits for demands on peer's acks for as long as the recorder runs (one loop per peer). */
  async function listen(peer: string): Promise<void> {
    while (!closing.signal.aborted) {
      await notifier.wait(ackDemandKey(peer), 3_600_000, closing.signal);
      if (closing.signal.aborted) return;
      // A wake by timeout once an hour only saves early for a moment: harmless.
      demandedUntil.set(peer, Date.now() + demandWindowMs);
      await Promise.allSettled([...slots.values()].filter((s) => s.peer === peer).map(flush));
    }
  }

  function flush(slot: AckSlot): Promise<void> {
    clearTimeout(slot.timer);
    slot.timer = undefined;
    const saving = slot.chain.then(async () => {
      const ack = slot.pending;
      slot.pending = undefined;
      if (ack === undefined || ack === slot.saved) return;
      try {
        await saveOutboundAck(db, slot.peer, slot.shardId, ack);
      } catch (e) {
        slot.pending ??= ack; // the next poll or flush tries again
        throw e;
      }
      slot.saved = ack;
      slot.savedAt = Date.now();
      notifier.notify(ackKey(slot.peer));
    });
    slot.chain = saving.catch(() => {});
    return saving;
  }

  return {
    /** Records the ack peer sent for shardId; resolves once saved, or at once when held back. */
    record(peer: string, shardId: number, ack: number): Promise<void> {
      const k = `${peer}/${shardId}`;
      let slot = slots.get(k);
      if (!slot) {
        if (![...slots.values()].some((s) => s.peer === peer)) void listen(peer);
        slots.set(k, (slot = { peer, shardId, savedAt: 0, chain: Promise.resolve() }));
      }
      if (ack === (slot.pending ?? slot.saved)) return Promise.resolve();
      slot.pending = ack;
      const now = Date.now();
      if (now < (demandedUntil.get(peer) ?? 0) || now - slot.savedAt >= intervalMs) return flush(slot);
      slot.timer ??= setTimeout(() => flush(slot).catch(() => {}), slot.savedAt + intervalMs - now);
      return Promise.resolve();
    },
    /** Saves what is held back and stops listening; call before the database closes. */
    async stop(): Promise<void> {
      closing.abort();
      await Promise.allSettled([...slots.values()].map(flush));
    },
  };
}

export type OutboundAckRecorder = ReturnType<typeof createOutboundAckRecorder>;

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
  // The statement itself fails when the ack is not at move.from: a transaction whose COMMIT
  // already went out (one round trip, page-transactions.ts) must roll back, not commit the page.
  await runGuard(
    tx,
    ADVANCE_INBOUND_TEXT,
    [move.to, move.maxTaskId, acks.param("lastAppliedCreatedAt", move.lastAppliedCreatedAt), remoteCluster, shardId, move.from],
    () => new RetryableReplicationError(`inbound ack of ${remoteCluster} shard ${shardId} moved from ${move.from} concurrently (another process applies it)`),
  );
}

const acks = tableCodec(replicationAckLevels);
// Once per applied page: fixed text. A page without a commit time keeps the one stored.
const ADVANCE_INBOUND_TEXT =
  `with moved as (update ${acks.table} set ${acks.name("ackLevel")} = $1, ${acks.name("maxTaskId")} = $2, ` +
  `${acks.name("lastAppliedCreatedAt")} = coalesce($3::timestamptz, ${acks.name("lastAppliedCreatedAt")}), ${acks.name("updatedAt")} = now() ` +
  `where ${acks.name("remoteCluster")} = $4 and ${acks.name("direction")} = 'inbound' and ${acks.name("queue")} = 'history' ` +
  `and ${acks.name("shardId")} = $5 and ${acks.name("ackLevel")} = $6 returning 1) select 1 / count(*)::int as moved from moved`;
