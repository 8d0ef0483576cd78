import { and, eq, gt } from "drizzle-orm";
import { listen, type EventNotifier, type Listening } from "../src/history/notifier";
import type { Db, Tx } from "../src/persistence/database";
import { composite, runGuard, runStatement, tableCodec, type StatementPart } from "../src/persistence/raw-statements";
import { replicationAckLevels } from "../src/persistence/schema";
import { RetryableReplicationError } from "./applier";

/** Notifier key woken whenever a remote's outbound ack moves (graceful failover waits on it). */
export const ackKey = (remoteCluster: string) => `ack:${remoteCluster}`;

/** Notifier key woken after a replication task of a shard commits (the sender's long poll). */
export const shardKey = (shardId: number) => `shard:${shardId}`;

/** Notifier key woken after a replication task of any shard commits: a long poll of many shards waits on it alone. */
export const anyShardKey = "shard:any";

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

/** How far cleanup deleted this cluster's history tasks past remoteCluster's ack, per shard (cleanup.ts; absent: never). */
export async function readCleanedMarks(db: Db, remoteCluster: string): Promise<Map<number, number>> {
  const rows = await db
    .select({ shardId: replicationAckLevels.shardId, through: replicationAckLevels.cleanedThrough })
    .from(replicationAckLevels)
    .where(and(history(remoteCluster, "outbound"), gt(replicationAckLevels.cleanedThrough, 0)));
  return new Map(rows.map((r) => [r.shardId, r.through]));
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

/** One peer's outbound acks: what is saved, and what arrived since, per shard. */
interface PeerAcks {
  peer: string;
  saved: Map<number, number>;
  pending: Map<number, number>;
  savedAt: number;
  timer?: ReturnType<typeof setTimeout>;
  /** Saves of one peer run one after another, so a stored ack never goes back. */
  chain: Promise<void>;
}

/**
 * Saves the acks pulling peers send with every poll: all of a peer's shards that moved in
 * one statement, at most once per intervalMs per peer (the last ack received for a shard
 * wins; what is held back is saved when the interval ends). Saving each shard on its own
 * was about one statement per replicated event with 512 shards. A stored ack that lags a
 * little is safe: cleanup then keeps tasks longer, status shows an older position. A
 * graceful failover that waits for a peer (listenForAckChange) gets its held-back acks
 * saved at once, and every ack of that peer saved on arrival for demandWindowMs after.
 */
export function createOutboundAckRecorder({ db, notifier, intervalMs = 250, demandWindowMs = 2_000 }: {
  db: Db;
  notifier: EventNotifier;
  intervalMs?: number;
  demandWindowMs?: number;
}) {
  const peers = new Map<string, PeerAcks>();
  const demandedUntil = new Map<string, number>();
  const closing = new AbortController();

  /** Waits for demands on peer's acks for as long as the recorder runs (one loop per peer). */
  async function listen(p: PeerAcks): Promise<void> {
    while (!closing.signal.aborted) {
      await notifier.wait(ackDemandKey(p.peer), 3_600_000, closing.signal);
      if (closing.signal.aborted) return;
      // A wake by timeout once an hour only saves early for a moment: harmless.
      demandedUntil.set(p.peer, Date.now() + demandWindowMs);
      await flush(p).catch(() => {});
    }
  }

  function flush(p: PeerAcks): Promise<void> {
    clearTimeout(p.timer);
    p.timer = undefined;
    const saving = p.chain.then(async () => {
      const batch = p.pending;
      p.pending = new Map();
      for (const [shardId, ack] of batch) if (ack === p.saved.get(shardId)) batch.delete(shardId);
      if (!batch.size) return;
      try {
        await saveOutboundAcks(db, p.peer, batch);
      } catch (e) {
        // The next poll or flush tries again; an ack that arrived since is newer.
        for (const [shardId, ack] of batch) if (!p.pending.has(shardId)) p.pending.set(shardId, ack);
        throw e;
      }
      for (const [shardId, ack] of batch) p.saved.set(shardId, ack);
      p.savedAt = Date.now();
      notifier.notify(ackKey(p.peer));
    });
    p.chain = saving.catch(() => {});
    return saving;
  }

  return {
    /**
     * Records the acks peer sent, a shard each; resolves once saved when they go at once, or
     * at once when held back (or when none moved).
     */
    record(peer: string, acks: readonly { shardId: number; acked: number }[]): Promise<void> {
      let p = peers.get(peer);
      if (!p) {
        peers.set(peer, (p = { peer, saved: new Map(), pending: new Map(), savedAt: 0, chain: Promise.resolve() }));
        void listen(p);
      }
      let moved = false;
      for (const { shardId, acked } of acks) {
        if (acked === (p.pending.get(shardId) ?? p.saved.get(shardId))) continue;
        p.pending.set(shardId, acked);
        moved = true;
      }
      if (!moved) return Promise.resolve();
      const now = Date.now();
      if (now < (demandedUntil.get(peer) ?? 0) || now - p.savedAt >= intervalMs) return flush(p);
      const held = p;
      p.timer ??= setTimeout(() => flush(held).catch(() => {}), p.savedAt + intervalMs - now);
      return Promise.resolve();
    },
    /** Saves what is held back and stops listening; call before the database closes. */
    async stop(): Promise<void> {
      closing.abort();
      await Promise.allSettled([...peers.values()].map(flush));
    },
  };
}

export type OutboundAckRecorder = ReturnType<typeof createOutboundAckRecorder>;

/** Records the acks a pulling peer sent (shard id to ack), in one statement; the peer is the only writer of its own position. */
export async function saveOutboundAcks(db: Db, remoteCluster: string, acks: ReadonlyMap<number, number>): Promise<void> {
  await runStatement(db, SAVE_OUTBOUND_TEXT, [remoteCluster, [...acks.keys()], [...acks.values()]]);
}

/**
 * This cluster's applied position in each of remoteCluster's shards, creating the rows at 0 on
 * first use. In two statements: a statement per shard was two per shard at every stream's
 * start (32,768 at 16,384 shards), queued on the pool ahead of every request meanwhile.
 */
export async function loadInboundAcks(db: Db, remoteCluster: string, shardIds: readonly number[]): Promise<Map<number, number>> {
  await runStatement(db, CREATE_INBOUND_TEXT, [remoteCluster, [...shardIds]]);
  const rows = await runStatement(db, LOAD_INBOUND_TEXT, [remoteCluster, [...shardIds]]);
  const found = new Map(rows.map((r) => [Number(r.shard_id), Number(r.ack_level)]));
  return new Map(shardIds.map((id) => [id, found.get(id)!]));
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
  const { text, params } = composite([advanceInboundAckPart(remoteCluster, shardId, move, "moved")]);
  await runGuard(tx, text, params, () =>
    new RetryableReplicationError(`inbound ack of ${remoteCluster} shard ${shardId} moved from ${move.from} concurrently (another process applies it)`));
}

/** advanceInboundAck as a part of a composite statement, its expressions named name and name_moved: it fails the statement (division by zero) unless the ack was at move.from. */
export function advanceInboundAckPart(
  remoteCluster: string,
  shardId: number,
  move: { from: number; to: number; maxTaskId: number; lastAppliedCreatedAt?: Date },
  name: string,
): StatementPart {
  return {
    ctes: [[name, ADVANCE_INBOUND_TEXT]],
    columns: [[`${name}_moved`, `1 / (select count(*) from ${name})::int`]],
    params: [move.to, move.maxTaskId, acks.param("lastAppliedCreatedAt", move.lastAppliedCreatedAt), remoteCluster, shardId, move.from],
  };
}

const acks = tableCodec(replicationAckLevels);
const SAVE_OUTBOUND_TEXT =
  `insert into ${acks.table} (${acks.name("remoteCluster")}, ${acks.name("direction")}, ${acks.name("queue")}, ${acks.name("shardId")}, ${acks.name("ackLevel")}) ` +
  `select $1, 'outbound', 'history', t.shard_id, t.ack_level from unnest($2::int[], $3::bigint[]) as t(shard_id, ack_level) ` +
  `on conflict (${acks.name("remoteCluster")}, ${acks.name("direction")}, ${acks.name("queue")}, ${acks.name("shardId")}) ` +
  `do update set ${acks.name("ackLevel")} = excluded.${acks.name("ackLevel")}, ${acks.name("updatedAt")} = now()`;
const CREATE_INBOUND_TEXT =
  `insert into ${acks.table} (${acks.name("remoteCluster")}, ${acks.name("direction")}, ${acks.name("queue")}, ${acks.name("shardId")}) ` +
  `select $1, 'inbound', 'history', t.shard_id from unnest($2::int[]) as t(shard_id) on conflict do nothing`;
const LOAD_INBOUND_TEXT =
  `select ${acks.name("shardId")} as shard_id, ${acks.name("ackLevel")} as ack_level from ${acks.table} ` +
  `where ${acks.name("remoteCluster")} = $1 and ${acks.name("direction")} = 'inbound' and ${acks.name("queue")} = 'history' and ${acks.name("shardId")} = any($2::int[])`;
// Once per applied page: fixed text. A page without a commit time keeps the one stored.
const ADVANCE_INBOUND_TEXT =
  `update ${acks.table} set ${acks.name("ackLevel")} = $1, ${acks.name("maxTaskId")} = $2, ` +
  `${acks.name("lastAppliedCreatedAt")} = coalesce($3::timestamptz, ${acks.name("lastAppliedCreatedAt")}), ${acks.name("updatedAt")} = now() ` +
  `where ${acks.name("remoteCluster")} = $4 and ${acks.name("direction")} = 'inbound' and ${acks.name("queue")} = 'history' ` +
  `and ${acks.name("shardId")} = $5 and ${acks.name("ackLevel")} = $6 returning 1`;
