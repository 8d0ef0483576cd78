import type { Db, Tx } from "../src/persistence/database";
import { replicationTasks } from "../src/persistence/schema";
import { runStatement, tableCodec } from "../src/persistence/raw-statements";

/**
 * How many tasks of a shard a remote is behind: the ids past its ack that the queue still holds,
 * from the later of the ack and the oldest task held (oldest, undefined with none held) through
 * the shard's last (max). Not max less the ack: tasks deleted past the ack (by the cleanup before
 * the remote was added, or past its grace while disabled) are never sent to it (it repairs them
 * by backfill), and a remote that never acked read behind by every task the shard ever had.
 * replication status (status.ts) and replication_outbound_tasks_lag (cleanup.ts) both count so.
 */
export function tasksBehind(max: number, ack: number, oldest: number | undefined): number {
  if (oldest === undefined) return 0;
  return Math.max(0, max - Math.max(ack, oldest - 1));
}

const tasks = tableCodec(replicationTasks);
/** Each shard in $1 with the id of its oldest task held (null with none): a primary key probe each, whatever the backlog. */
const OLDEST_HELD_TEXT =
  `select m.shard_id, (select t.${tasks.name("taskId")} from ${tasks.table} t where t.${tasks.name("shardId")} = m.shard_id ` +
  `order by t.${tasks.name("taskId")} limit 1) as oldest from unnest($1::int[]) as m(shard_id)`;

/** The oldest task id the queue holds in each of shardIds; a shard holding none is left out. */
export async function oldestHeld(db: Db | Tx, shardIds: readonly number[]): Promise<Map<number, number>> {
  if (!shardIds.length) return new Map();
  const rows = await runStatement(db, OLDEST_HELD_TEXT, [shardIds]);
  return new Map(rows.filter((r) => r.oldest !== null).map((r) => [Number(r.shard_id), Number(r.oldest)]));
}
