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
  /** A table is analyzed once at least this many of its rows changed since its last analyze... */
  minChangedRows?: number;
  /** ...and at least this fraction of them. */
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
export function createPlannerStats({ db, log, intervalMs = 5_000, minChangedRows = 1000, changedFraction = 0.1 }: PlannerStatsDeps) {
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

/** This schema's tables with more than one index that changed by at least $1 rows and $2 of their rows since their last analyze. */
const STALE_TABLES_TEXT = `
  select relname from pg_stat_user_tables t
  where schemaname = current_schema() and (select count(*) from pg_index i where i.indrelid = t.relid) > 1
    and n_mod_since_analyze >= greatest($1::bigint, ($2::float8 * n_live_tup)::bigint)
  order by relname`;

export type PlannerStats = ReturnType<typeof createPlannerStats>;
