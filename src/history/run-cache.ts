import type { ExecutionRow } from "./execution-store";

/**
 * Rows of runs as this process's own commits left them, so that the next write of the same
 * run can go out in one round trip without reading the row first (the engine's appends, the
 * receiver's pages). A row here may be stale (another process or writer changed the run):
 * every write planned from one compares its db_version in SQL, and fails and rolls back if
 * it moved (see DIVISION_BY_ZERO). Least recently used rows go past `limit`.
 */
export function createRunCache(limit = 4096) {
  const rows = new Map<string, ExecutionRow>();
  return {
    get(key: string): ExecutionRow | undefined {
      const row = rows.get(key);
      if (row) {
        rows.delete(key);
        rows.set(key, row);
      }
      return row;
    },
    /** Records the row a committed write left. */
    put(key: string, row: ExecutionRow): void {
      rows.delete(key);
      rows.set(key, row);
      if (rows.size > limit) rows.delete(rows.keys().next().value!);
    },
    /** Forgets a run whose row this process no longer knows (a failed or conflict-resolving write). */
    forget(key: string): void {
      rows.delete(key);
    },
  };
}

export type RunCache = ReturnType<typeof createRunCache>;

/** The row of a run saved from prev with next: db_version moves on. */
export const savedRow = (prev: ExecutionRow, next: Partial<ExecutionRow>): ExecutionRow => ({ ...prev, ...next, dbVersion: prev.dbVersion + 1 });

/** The row of a run just inserted: the columns not given take their defaults. */
export const insertedRow = (row: Omit<ExecutionRow, "closeTime" | "cancelRequested" | "executionTimeoutMs" | "dbVersion"> & Partial<ExecutionRow>): ExecutionRow =>
  ({ closeTime: null, cancelRequested: false, executionTimeoutMs: 0, dbVersion: 1, ...row });
