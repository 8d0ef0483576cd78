import type { ExecutionRow } from "./execution-store";

/**
 * Rows of runs as this process's own commits left them, by key, least recently used first
 * out past `limit`: the next write of the same run can then go out in one round trip
 * without reading the row first (the engine's appends, the receiver's pages). A row here
 * may be stale (another process or writer changed the run): every write planned from one
 * compares its db_version in SQL, and fails and rolls back if it moved (see DIVISION_BY_ZERO).
 */
export function createRecentRows(limit: number) {
  const rows = new Map<string, ExecutionRow>();
  // A Map iterates in insertion order: re-inserting a row makes it the most recently used.
  const use = (key: string, row: ExecutionRow) => {
    rows.delete(key);
    rows.set(key, row);
  };
  return {
    get(key: string): ExecutionRow | undefined {
      const row = rows.get(key);
      if (row) use(key, row);
      return row;
    },
    /** Records the row a committed write left. */
    put(key: string, row: ExecutionRow): void {
      use(key, row);
      if (rows.size > limit) rows.delete(rows.keys().next().value!);
    },
    /** Forgets a run whose row this process no longer knows (a failed or conflict-resolving write). */
    forget(key: string): void {
      rows.delete(key);
    },
    get size() {
      return rows.size;
    },
  };
}

/** The row of a run saved from prev with next: db_version moves on. */
export const savedRow = (prev: ExecutionRow, next: Partial<ExecutionRow>): ExecutionRow => ({ ...prev, ...next, dbVersion: prev.dbVersion + 1 });

/** The row of a run just inserted: the columns not given take their defaults. */
export const insertedRow = (row: Omit<ExecutionRow, "closeTime" | "cancelRequested" | "executionTimeoutMs" | "dbVersion"> & Partial<ExecutionRow>): ExecutionRow =>
  ({ closeTime: null, cancelRequested: false, executionTimeoutMs: 0, dbVersion: 1, ...row });
