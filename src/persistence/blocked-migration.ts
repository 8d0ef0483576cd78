import { sql } from "drizzle-orm";
import type { MigrationMeta } from "drizzle-orm/migrator";
import { pgErrorOf } from "../errors";
import type { Db } from "./database";
import { rowsOf } from "./raw-statements";

/**
 * What to tell of a migration that waited out the lock timeout (55P03): which migration and
 * table, which sessions hold that table, and that nothing was applied. The start said only
 * `55P03: canceling statement due to lock timeout`, as when another session (a pg_dump, an
 * operator's open transaction, a server of the older build in a long statement) held a table a
 * migration alters: the operator could not tell what to end, nor whether the database was left
 * half-migrated. Empty for any other failure.
 */
export async function blockedMigrationReason(db: Db, e: unknown, migrations: MigrationMeta[], tags: string[]): Promise<string> {
  const { code, message } = pgErrorOf(e);
  if (code !== "55P03" || !message?.includes("lock timeout")) return "";
  const query = failedQuery(e);
  const at = migrations.findIndex((m) => m.sql.some((s) => s.trim() === query.trim()));
  const table = /^\s*(?:ALTER TABLE|DROP TABLE|CREATE (?:UNIQUE )?INDEX\b[^"]*\bON)\s+(?:ONLY\s+)?"([^"]+)"/i.exec(query)?.[1];
  const holders = table ? await holdersOf(db, table).catch(() => []) : [];
  return (at >= 0 ? `, applying ${tags[at] ?? migrations[at]!.folderMillis}` : "") +
    (table ? ` (its table ${table} ` + (holders.length ? `held by ${holders.join(", ")})` : "held by another session, gone since)") : "") +
    ": none of the pending migrations is applied; start again once the table's holder ends, or raise persistence.datastore.postgres.lockTimeoutMs";
}

/** The other sessions holding a lock on table, as `pid N (application, state since T)`. */
async function holdersOf(db: Db, table: string): Promise<string[]> {
  const rows = rowsOf(await db.execute(sql`
    select distinct a.pid, a.application_name as app, a.state, coalesce(a.xact_start, a.backend_start) as since
    from pg_locks l join pg_stat_activity a on a.pid = l.pid
    where l.granted and l.pid <> pg_backend_pid() and l.relation = to_regclass(quote_ident(${table}))
    order by since`));
  return rows.map((r) => `pid ${r.pid} (${r.app || "no application_name"}, ${r.state} since ${new Date(r.since as string).toISOString()})`);
}

/** The statement drizzle's error names (DrizzleQueryError's query), if any. */
function failedQuery(e: unknown): string {
  for (let cur = e; cur && typeof cur === "object"; cur = (cur as { cause?: unknown }).cause) {
    const { query } = cur as { query?: unknown };
    if (typeof query === "string") return query;
  }
  return "";
}
