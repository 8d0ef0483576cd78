import { runKeyText, type RunKey } from "../src/history/branch-store";
import type { ExecutionRow } from "../src/history/execution-store";
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
  const rows = new Map<string, ExecutionRow>();
  // A Map iterates in insertion order: re-inserting a row makes it the most recently used.
  const use = (k: string, row: ExecutionRow) => {
    rows.delete(k);
    rows.set(k, row);
  };
  return {
    get(key: RunKey): ExecutionRow | undefined {
      const k = runKeyText(key);
      const row = rows.get(k);
      if (row) use(k, row);
      return row;
    },
    /** Records the rows a committed apply left. */
    committed(writes: RunWrites[]): void {
      for (const w of writes) {
        const row = rowAfter(w);
        if (!row) continue;
        use(runKeyText(row), row);
        if (rows.size > limit) rows.delete(rows.keys().next().value!);
      }
    },
    /** Forgets runs whose rows this process no longer knows (a failed or conflict-resolving apply). */
    forget(keys: RunKey[]): void {
      for (const k of keys) rows.delete(runKeyText(k));
    },
    get size() {
      return rows.size;
    },
  };
}

/** A run's row after w committed: a saved state bumps db_version; a new run starts at the column defaults. */
function rowAfter(w: RunWrites): ExecutionRow | undefined {
  if (w.save) return { ...w.save.prev, ...w.save.next, dbVersion: w.save.prev.dbVersion + 1 };
  if (w.insert) return { closeTime: null, cancelRequested: false, executionTimeoutMs: 0, dbVersion: 1, ...w.insert } as ExecutionRow;
  return undefined;
}
