import { eq, lt, lte } from "drizzle-orm";
import type { Logger } from "../src/observability/log";
import type { Metrics } from "../src/observability/metrics";
import { createPeriodic } from "../src/periodic";
import { transaction } from "../src/persistence/call-signal";
import type { Db, Tx } from "../src/persistence/database";
import { runStatement, tableCodec } from "../src/persistence/raw-statements";
import { clusterMetadata, namespaceReplicationTasks, replicationAckLevels, replicationTasks, shards } from "../src/persistence/schema";
import { oldestHeld, tasksBehind } from "./outbound-lag";

export interface ReplicationCleanupDeps {
  db: Db;
  log: Logger;
  intervalMs?: number;
  /** With no remote cluster, tasks older than this are deleted (a remote added later repairs through raw history). */
  graceMs?: number;
  /**
   * A remote disabled longer than this holds no history task: they are deleted past its ack, how
   * far recorded as its cleaned_through, and the sender tells it so once enabled (it backfills).
   */
  disabledGraceMs?: number;
  now?: () => Date;
  /** Gets replication_outbound_tasks_lag per remote and shard at every pass. */
  metrics?: Metrics;
}

/**
 * Deletes history and namespace replication tasks every known remote acked: per shard, at or below
 * the minimum outbound ack over all remotes, enabled or not (a disabled connection keeps its
 * position, so its tasks stay), except, for history tasks, a remote disabled past disabledGraceMs
 * (as Temporal, which leaves disabled clusters out): left in, it held the queue for good and the
 * disk filled. What is deleted past its ack is its cleaned_through, per shard, in the same
 * transaction; enabled again, the sender says so and it backfills (receiver.ts, repairCleaned).
 * The namespace queue stays held: it grows only with namespace changes. Each pass also shows each remote's backlog here as a gauge: a
 * remote that is down reports no lag of its own, and its tasks pile up on this side.
 */
export function createReplicationCleanup({
  db, log, intervalMs = 10_000, graceMs = 60_000, disabledGraceMs = 3_600_000, now = () => new Date(), metrics,
}: ReplicationCleanupDeps) {
  /** The remotes whose backlog the gauge shows: one removed since has its series dropped. */
  const gauged = new Set<string>();
  /**
   * The remotes, counters and outbound acks (STATE_TEXT) as of the last pass that committed: a
   * pass finding them the same has nothing to delete and no gauge to change, and ends there. An
   * idle cluster of 16,384 shards read every shard and ack and set every gauge each 10 s.
   */
  let cleaned: string | undefined;
  /** The snapshot (pg_current_snapshot) at which cleaned was read. */
  let cleanedAt: string | undefined;
  /** When the next disabled remote passes its grace: a pass is due then, whatever committed. */
  let skipDueAt = Number.POSITIVE_INFINITY;

  /**
   * Sets each remote's gauge per shard to the tasks it is behind as replication status counts them
   * (outbound-lag.ts), once this pass's deletes are done. Only a shard some remote's ack is below
   * the last task of has its oldest task looked up: a probe of the primary key each, not a count of
   * the backlog (a remote down for hours leaves millions).
   */
  async function showBacklog(tx: Tx, remotes: string[], maxima: Map<number, number>, ackOf: (remote: string, shardId: number) => number) {
    if (!metrics) return;
    for (const remote of gauged) {
      if (remotes.includes(remote)) continue;
      metrics.remove("replication_outbound_tasks_lag", { remote_cluster: remote });
      gauged.delete(remote);
    }
    const behind = [...maxima].filter(([shardId, max]) => remotes.some((r) => ackOf(r, shardId) < max)).map(([shardId]) => shardId);
    const oldest = await oldestHeld(tx, behind);
    for (const remote of remotes) {
      for (const [shardId, max] of maxima) {
        metrics.set("replication_outbound_tasks_lag", { remote_cluster: remote, shard: String(shardId) }, tasksBehind(max, ackOf(remote, shardId), oldest.get(shardId)));
      }
      gauged.add(remote);
    }
  }

  /**
   * One pass, in one transaction; returns how many tasks it deleted. The stop (signal) rolls it
   * back, cancelling a statement waiting for a lock, rather than wait out lockTimeoutMs.
   */
  async function runOnce(signal?: AbortSignal): Promise<number> {
    let seen: string | undefined;
    let seenAt: string | undefined;
    const n = await transaction(db, async (tx) => {
      const [row] = await runStatement(tx, STATE_TEXT, [cleaned === undefined ? null : cleanedAt ?? null]);
      seenAt = String(row!.snapshot);
      const due = now().getTime() >= skipDueAt;
      // Nothing committed since the last pass read the same: it holds still (STATE_TEXT).
      if (!row!.changed && !due) return (seen = cleaned), 0;
      seen = row!.remotes === null ? undefined : `${String(row!.remotes)}|${String(row!.counters)}|${String(row!.acks)}`;
      return seen !== undefined && seen === cleaned && !due ? 0 : pass(tx);
    }, signal);
    cleaned = seen;
    cleanedAt = seenAt;
    return n;
  }

  async function pass(tx: Tx): Promise<number> {
    // Shared locks: an enable of a remote skipped here waits for this pass, so a sender that finds
    // the remote enabled finds its cleaned_through too.
    const remotes = await tx
      .select({ name: clusterMetadata.clusterName, enabled: clusterMetadata.enableConnection, disabledAt: clusterMetadata.disabledAt, updatedAt: clusterMetadata.updatedAt })
      .from(clusterMetadata)
      .where(eq(clusterMetadata.isCurrent, false))
      .for("share");
    skipDueAt = Number.POSITIVE_INFINITY;
    if (remotes.length === 0) {
      await showBacklog(tx, [], new Map(), () => 0);
      const before = new Date(now().getTime() - graceMs);
      const gone = await tx.delete(replicationTasks).where(lt(replicationTasks.createdAt, before)).returning({ id: replicationTasks.taskId });
      await tx.delete(namespaceReplicationTasks).where(lt(namespaceReplicationTasks.createdAt, before));
      return gone.length;
    }
    // The grace counts from the disable (an upsert that keeps the remote disabled keeps it); a row
    // disabled by a direct write has only its updatedAt, at or after the disable.
    const skipped = new Set<string>();
    for (const r of remotes) {
      if (r.enabled) continue;
      const passes = (r.disabledAt ?? r.updatedAt).getTime() + disabledGraceMs;
      if (passes <= now().getTime()) skipped.add(r.name);
      else skipDueAt = Math.min(skipDueAt, passes);
    }
    const [shardRows, acks] = await Promise.all([
      tx.select({ shardId: shards.shardId, next: shards.nextTaskId }).from(shards),
      tx
        .select()
        .from(replicationAckLevels)
        .where(eq(replicationAckLevels.direction, "outbound")),
    ]);
    const ackByKey = new Map(acks.map((a) => [`${a.queue}/${a.remoteCluster}/${a.shardId}`, a.ackLevel]));
    const ackOf = (queue: string, remote: string, shardId: number) => ackByKey.get(`${queue}/${remote}/${shardId}`) ?? 0;
    const nsMin = Math.min(...remotes.map((r) => ackOf("namespace", r.name, 0)));
    if (nsMin > 0) await tx.delete(namespaceReplicationTasks).where(lte(namespaceReplicationTasks.taskId, nsMin));
    // Per shard, the least ack of every remote held to (one without an ack row for the shard has
    // acked nothing: it holds everything; with every remote skipped, the shard's last task);
    // every shard's acked tasks go in one statement, not one each.
    const holding = remotes.filter((r) => !skipped.has(r.name));
    const least = new Map<number, number>();
    const marks: { remote: string; shardId: number; through: number }[] = [];
    for (const { shardId, next } of shardRows) {
      const min = holding.length ? Math.min(...holding.map((r) => ackOf("history", r.name, shardId))) : Number(next) - 1;
      if (min <= 0) continue;
      least.set(shardId, min);
      for (const remote of skipped) if (ackOf("history", remote, shardId) < min) marks.push({ remote, shardId, through: min });
    }
    const deleted = least.size ? await deleteAcked(tx, least, marks) : 0;
    const maxima = new Map(shardRows.map((s) => [s.shardId, Number(s.next) - 1]));
    await showBacklog(tx, remotes.map((r) => r.name), maxima, (remote, shardId) => ackOf("history", remote, shardId));
    return deleted;
  }

  /** Deletes each shard's tasks at or below its least ack, recording how far past their acks for the remotes skipped (marks). */
  async function deleteAcked(tx: Tx, least: Map<number, number>, marks: { remote: string; shardId: number; through: number }[]): Promise<number> {
    if (marks.length) {
      await runStatement(tx, MARK_CLEANED_TEXT, [marks.map((m) => m.remote), marks.map((m) => m.shardId), marks.map((m) => m.through)]);
      log.info("replication tasks deleted past the acks of remotes disabled past their grace; enabled, they repair by backfill", {
        remotes: [...new Set(marks.map((m) => m.remote))], shards: marks.length,
      });
    }
    const [row] = await runStatement(tx, DELETE_ACKED_TEXT, [[...least.keys()], [...least.values()]]);
    return Number(row!.deleted);
  }

  const periodic = createPeriodic(runOnce, {
    name: "replication task cleanup",
    log,
    intervalMs,
    onDone: (n) => {
      if (n) log.debug("replication tasks cleaned up", { deleted: n });
    },
  });

  return { runOnce, start: periodic.start, stop: periodic.stop };
}

export type ReplicationCleanup = ReturnType<typeof createReplicationCleanup>;

const tasks = tableCodec(replicationTasks);
const peers = tableCodec(clusterMetadata);
const shardRows = tableCodec(shards);
const ackRows = tableCodec(replicationAckLevels);
/**
 * What a pass depends on, in one row: the remotes' names (null with none), the shard counters'
 * sum (counters only grow), which are disabled since when, and the outbound acks' count, sum and the history acks' latest
 * update (a history ack is set as the peer sends it, so it may go back). Not the namespace
 * positions' update: the namespace sender writes it at each of a peer's polls (every 20 s),
 * level unchanged, and each such write made the next pass read every shard and ack (at
 * 16,384 shards most of an idle cluster's CPU). A namespace position only grows (advanceAckLevel),
 * so the sum shows each move of it.
 */
const STATE_SUMS = [
  // A disabled remote with when it was disabled: a disable or enable changes what a pass keeps.
  ["remotes", `(select string_agg(${peers.name("clusterName")} || case when ${peers.name("enableConnection")} then '' else '@' || coalesce(${peers.name("disabledAt")}, ${peers.name("updatedAt")})::text end, ',' ` +
    `order by ${peers.name("clusterName")}) from ${peers.table} where ${peers.name("isCurrent")} = false)`],
  ["counters", `(select coalesce(sum(${shardRows.name("nextTaskId")}), 0)::text from ${shardRows.table})`],
  ["acks", `(select count(*)::text || '/' || coalesce(sum(${ackRows.name("ackLevel")}), 0)::text || '/' || ` +
    `coalesce(max(${ackRows.name("updatedAt")}) filter (where ${ackRows.name("queue")} = 'history')::text, '') ` +
    `from ${ackRows.table} where ${ackRows.name("direction")} = 'outbound')`],
] as const;
/**
 * STATE_SUMS, unless nothing committed since the snapshot in $1 (changed false, the sums null,
 * each CASE running its subquery only when taken): a snapshot of the instance stays the same only
 * while no transaction that writes begins or ends (page-reader.ts, MARKS_TEXT). On an idle
 * instance a pass reads no shard and no ack.
 */
const CHANGED = `pg_current_snapshot()::text is distinct from $1::text`;
const STATE_TEXT =
  `select pg_current_snapshot()::text as snapshot, ${CHANGED} as changed, ` +
  STATE_SUMS.map(([name, sum]) => `case when ${CHANGED} then ${sum} end as ${name}`).join(", ");
/** Deletes each shard's tasks at or below its least ack ($1 shard ids, $2 acks); answers how many. */
const DELETE_ACKED_TEXT =
  `with gone as (delete from ${tasks.table} t using unnest($1::int[], $2::bigint[]) as m(shard_id, acked) ` +
  `where t.${tasks.name("shardId")} = m.shard_id and t.${tasks.name("taskId")} <= m.acked returning 1) ` +
  `select count(*)::int as deleted from gone`;
/**
 * Records how far each (remote $1, shard $2) was cleaned past its ack ($3), as its outbound
 * history row's cleaned_through; it never goes back.
 */
const MARK_CLEANED_TEXT =
  `insert into ${ackRows.table} (${ackRows.name("remoteCluster")}, ${ackRows.name("direction")}, ${ackRows.name("queue")}, ${ackRows.name("shardId")}, ${ackRows.name("cleanedThrough")}) ` +
  `select m.remote, 'outbound', 'history', m.shard_id, m.through from unnest($1::text[], $2::int[], $3::bigint[]) as m(remote, shard_id, through) ` +
  `on conflict (${ackRows.name("remoteCluster")}, ${ackRows.name("direction")}, ${ackRows.name("queue")}, ${ackRows.name("shardId")}) ` +
  `do update set ${ackRows.name("cleanedThrough")} = greatest(${ackRows.table}.${ackRows.name("cleanedThrough")}, excluded.${ackRows.name("cleanedThrough")})`;
