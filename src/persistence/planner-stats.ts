import { sql } from "drizzle-orm";
import type { Logger } from "../observability/log";
import { createPeriodic } from "../periodic";
import type { Db } from "./database";
import { runStatement } from "./raw-statements";

export interface PlannerStatsDeps {
  db: Db;
  log: Logger;
  /** How often the tables are checked; 0 never. */
  intervalMs?: number;
  /** A table is analyzed once its row count moved by at least this many rows since its last analyze... */
  minChangedRows?: number;
  /** ...and by at least this fraction of the rows that analyze counted. */
  changedFraction?: number;
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
export function createPlannerStats({ db, log, intervalMs = 5_000, minChangedRows = 100, changedFraction = 0.1 }: PlannerStatsDeps) {
  /** One pass: analyzes the tables that changed enough; returns their names. */
  async function runOnce(): Promise<string[]> {
    const stale = await runStatement(db, STALE_TABLES_TEXT, [minChangedRows, changedFraction]);
    const done: string[] = [];
    for (const { relname } of stale) {
      await db.execute(sql`analyze ${sql.identifier(relname as string)}`);
      done.push(relname as string);
    }
    return done;
  }

  const periodic = createPeriodic(runOnce, {
    intervalMs,
    onDone: (analyzed) => {
      if (analyzed.length) log.debug("planner statistics gathered", { tables: analyzed });
    },
    onError: (e) => log.warn("gathering planner statistics failed", { error: (e as Error).message }),
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
 * This schema's tables with more than one index whose row count moved by at least $1 rows and
 * $2 of the rows its statistics last counted (pg_class.reltuples: -1 before the first analyze
 * or vacuum). Updates do not count: they leave the table's size, and so the plans' choice of
 * index, as it was. Counting them (n_mod_since_analyze), a table of a few thousand runs that
 * take hundreds of signals a second was analyzed at every check, and each analyze discards
 * every plan PostgreSQL keeps for the statements that read the table, on every connection
 * (see bench/README.md, 2026-12-04, night).
 */
const STALE_TABLES_TEXT = `
  select t.relname from pg_stat_user_tables t join pg_class c on c.oid = t.relid
  where t.schemaname = current_schema() and (select count(*) from pg_index i where i.indrelid = t.relid) > 1
    and abs(t.n_live_tup - greatest(c.reltuples, 0)) >= greatest($1::float8, $2::float8 * greatest(c.reltuples, 0))
  order by t.relname`;

export type PlannerStats = ReturnType<typeof createPlannerStats>;
