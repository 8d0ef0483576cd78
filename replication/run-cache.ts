import { runKeyText, type RunKey } from "../src/history/branch-store";
import { createRecentRows, insertedRow, savedRow } from "../src/history/recent-rows";
import type { RunWrites } from "./applier";

/**
 * The rows of runs this process applied lately, as its commits left them, so that the next
 * page of the same runs can be applied without reading them first (one round trip,
 * page-transactions.ts). A row here may be stale (another process or writer changed the run): every
 * write planned from it compares the row's db_version, and fails and rolls back if it moved.
 * Least recently used rows go past `limit`: a run gets its next page soon or not at all
 * (1,024 rows are about 0.5 MB of heap; with more runs in flight, pages of the others take
 * two round trips, as without the cache).
 */
export function createRunCache(limit = 1024) {
  const rows = createRecentRows(limit);
  return {
    get: (key: RunKey) => rows.get(runKeyText(key)),
    /** Records the rows a committed apply left: a saved state bumps db_version; a new run starts at the column defaults. */
    committed(writes: RunWrites[]): void {
      for (const w of writes) {
        const row = w.save ? savedRow(w.save.prev, w.save.next) : w.insert && insertedRow(w.insert);
        if (row) rows.put(runKeyText(row), row);
      }
    },
    /** Forgets runs whose rows this process no longer knows (a failed or conflict-resolving apply). */
    forget(keys: RunKey[]): void {
      for (const k of keys) rows.forget(runKeyText(k));
    },
    get size() {
      return rows.size;
    },
  };
}
