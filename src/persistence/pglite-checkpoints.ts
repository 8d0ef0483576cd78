import { sql } from "drizzle-orm";
import type { Logger } from "../observability/log";
import { createPeriodic } from "../periodic";
import type { Db } from "./database";
import { rowsOf } from "./raw-statements";

/** How much WAL a PGlite database may gather past its last checkpoint before tern asks for one. */
export const PGLITE_CHECKPOINT_WAL_BYTES = 16 * 1024 * 1024;

/** How often the WAL gathered past the last checkpoint is read. */
export const PGLITE_CHECKPOINT_INTERVAL_MS = 10_000;

/** Bytes of WAL written since the last checkpoint's redo point: what a start after a crash replays. */
async function walPastCheckpoint(db: Db): Promise<number> {
  const [row] = rowsOf(await db.execute(sql`select (pg_current_wal_lsn() - (select redo_lsn from pg_control_checkpoint()))::bigint::text as bytes`));
  return Number(row!.bytes);
}

/**
 * Checkpoints a PGlite database once walBytes of WAL gathered past the last one. PGlite runs
 * PostgreSQL as a single-user backend, with no checkpointer: nothing checkpoints it until it is
 * closed (max_wal_size, checkpoint_timeout are never acted on), so a server killed after a day
 * of writes replayed the day's WAL at its next start (100 MB: 2.8-3.1 s of redo, 8.4-8.7 s to
 * open, on a loaded 2-core host; 16 MB: some 0.5 s of redo) and pg_wal grew as long.
 * PostgreSQL checkpoints itself.
 */
export function createPgliteCheckpoints(o: { db: Db; log: Logger; walBytes?: number; intervalMs?: number }) {
  const walBytes = o.walBytes ?? PGLITE_CHECKPOINT_WAL_BYTES;
  return createPeriodic(async () => {
    const past = await walPastCheckpoint(o.db);
    if (past < walBytes) return;
    await o.db.execute(sql`checkpoint`);
    o.log.debug("checkpointed the PGlite database", { walBytes: past });
  }, { name: "PGlite checkpoint", log: o.log, intervalMs: o.intervalMs ?? PGLITE_CHECKPOINT_INTERVAL_MS });
}
