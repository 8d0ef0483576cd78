import { sql } from "drizzle-orm";
import type { Db, Tx } from "../../src/persistence/database";
import { rowsOf } from "../../src/persistence/raw-statements";

/** history_events' TOAST table (where large attributes are stored out of line) and its size in blocks. */
export async function historyToast(db: Db): Promise<{ toast: string; blocks: number }> {
  const [row] = rowsOf(await db.execute(sql`select reltoastrelid::regclass::text as toast,
    (pg_relation_size(reltoastrelid) / current_setting('block_size')::int)::int as blocks from pg_class where oid = 'history_events'::regclass`)) as { toast: string; blocks: number }[];
  return row!;
}

/**
 * What read runs, and how many blocks of history_events' TOAST table it fetched: in one
 * transaction, so this backend's own counts say what read did.
 */
export async function toastBlocksFetched<T>(db: Db, read: (tx: Tx) => Promise<T>): Promise<{ result: T; fetched: number }> {
  const { toast } = await historyToast(db);
  return db.transaction(async (tx) => {
    const count = async () => (rowsOf(await tx.execute(sql`select pg_stat_get_xact_blocks_fetched(${toast}::regclass)::int as n`)) as { n: number }[])[0]!.n;
    const before = await count();
    const result = await read(tx);
    return { result, fetched: (await count()) - before };
  });
}
