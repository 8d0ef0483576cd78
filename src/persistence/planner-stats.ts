import { sql } from "drizzle-orm";
import type { Logger } from "../observability/log";
import type { Db } from "./database";

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

/** A table that changed enough since PostgreSQL last gathered its statistics. */
interface StaleTable {
  relname: string;
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
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running: Promise<string[]> | undefined;
  let stopped = true;

  /** One pass: analyzes the tables that changed enough; returns their names. */
  async function runOnce(): Promise<string[]> {
    const result = await db.execute(sql`
      select relname from pg_stat_user_tables t
      where schemaname = current_schema() and (select count(*) from pg_index i where i.indrelid = t.relid) > 1
        and n_mod_since_analyze >= greatest(${minChangedRows}::bigint, (${changedFraction}::float8 * n_live_tup)::bigint)
      order by relname`);
    // postgres.js answers the rows, PGlite { rows }.
    const stale = ((result as { rows?: StaleTable[] }).rows ?? (result as unknown as StaleTable[]));
    const done: string[] = [];
    for (const t of stale) {
      await db.execute(sql`analyze ${sql.identifier(t.relname)}`);
      done.push(t.relname);
    }
    return done;
  }

  async function tick(): Promise<void> {
    try {
      running = runOnce();
      const analyzed = await running;
      if (analyzed.length) log.debug("planner statistics gathered", { tables: analyzed });
    } catch (e) {
      log.warn("gathering planner statistics failed", { error: (e as Error).message });
    } finally {
      running = undefined;
      if (!stopped) timer = setTimeout(tick, intervalMs);
    }
  }

  return {
    runOnce,
    start(): void {
      if (intervalMs <= 0) return;
      stopped = false;
      timer = setTimeout(tick, intervalMs);
    },
    async stop(): Promise<void> {
      stopped = true;
      if (timer) clearTimeout(timer);
      await running?.catch(() => {});
    },
  };
}

export type PlannerStats = ReturnType<typeof createPlannerStats>;
