import { sql } from "drizzle-orm";
import type { Logger } from "../observability/log";
import { createPeriodic } from "../periodic";
import { transaction } from "./call-signal";
import type { Db } from "./database";
import { runStatement } from "./raw-statements";

export interface PlannerStatsDeps {
  db: Db;
  log: Logger;
  /** How often the tables are checked; 0 never. */
  intervalMs?: number;
  /** A table is analyzed once its row count moved by at least this many rows since its last analyze... */
  minChangedRows?: number;
  /** ...and grew or shrank by at least this factor. */
  sizeFactor?: number;
}

/**
 * Keeps PostgreSQL's planner statistics current, when autovacuum does not (it can be off,
 * and runs a minute apart at best), for this database's tables with more than one index:
 * there statistics choose the index. Without them, a statement first planned while its
 * table was empty keeps that plan: executions' run lookups then go through its
 * namespace/start-time index (on an empty table every index costs the same) and read every
 * run of the namespace per lookup, more with every run. An ANALYZE gives the planner the
 * table's real shape and invalidates the plans kept for it. Tables with one index (the
 * large event and request tables) are left to autovacuum: their plans have no such choice.
 */
export function createPlannerStats({ db, log, intervalMs = 5_000, minChangedRows = 100, sizeFactor = 2 }: PlannerStatsDeps) {
  /**
   * One pass: analyzes the tables that changed enough; returns their names. stopping: the
   * server's stop, which cancels an ANALYZE waiting for its lock (a session holding the table
   * locked) rather than wait for the lock timeout, and analyzes no more tables.
   */
  async function runOnce(stopping?: AbortSignal): Promise<string[]> {
    const stale = await runStatement(db, STALE_TABLES_TEXT, [minChangedRows, sizeFactor]);
    const done: string[] = [];
    for (const { relname } of stale) {
      await transaction(db, (tx) => tx.execute(sql`analyze ${sql.identifier(relname as string)}`), stopping);
      done.push(relname as string);
    }
    return done;
  }

  const periodic = createPeriodic(runOnce, {
    name: "gathering planner statistics",
    log,
    intervalMs,
    onDone: (analyzed) => {
      if (analyzed.length) log.debug("planner statistics gathered", { tables: analyzed });
    },
  });

  return {
    runOnce,
    start(): void {
      if (intervalMs > 0) periodic.start();
    },
    stop: periodic.stop,
  };
}

/**
 * This schema's tables with more than one index whose row count moved by at least $1 rows
 * and grew or shrank by a factor of $2 since their statistics last counted it
 * (pg_class.reltuples: -1 before the first analyze or vacuum). Between analyzes PostgreSQL
 * scales the counted rows by the table's pages when it plans, so it is the first rows that
 * matter, and a table's shape changing by a factor; updates leave its size as it was and do
 * not count. Counting them (n_mod_since_analyze, at a tenth), a table of a thousand runs
 * taking hundreds of signals a second was analyzed at every check, and each analyze discards
 * the plans PostgreSQL keeps for every statement on the table, on every connection (see
 * bench/README.md, 2026-12-04, night).
 */
const STALE_TABLES_TEXT = `
  select t.relname from pg_stat_user_tables t join pg_class c on c.oid = t.relid
  cross join lateral (select t.n_live_tup::float8 as n, greatest(c.reltuples, 0)::float8 as counted) s
  where t.schemaname = current_schema() and (select count(*) from pg_index i where i.indrelid = t.relid) > 1
    and abs(s.n - s.counted) >= $1::float8 and greatest(s.n, s.counted) >= $2::float8 * least(s.n, s.counted)
  order by t.relname`;

export type PlannerStats = ReturnType<typeof createPlannerStats>;
