import { readFileSync } from "node:fs";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import { readMigrationFiles } from "drizzle-orm/migrator";
import { migrate as migratePostgres } from "drizzle-orm/postgres-js/migrator";
import { errorReason, INSUFFICIENT_PRIVILEGE, pgErrorOf, schemaTooNewMessage } from "../errors";
import { blockedMigrationReason } from "./blocked-migration";
import type { Database, Db } from "./database";
import { rowsOf } from "./raw-statements";

/** Where the applied-migration journal lives (drizzle's default). */
const JOURNAL = `"drizzle"."__drizzle_migrations"`;

export interface SchemaStatus {
  /** Migration tags this build knows, oldest first. */
  known: string[];
  /** Known tags already applied. */
  applied: string[];
  /** Known tags not yet applied. */
  pending: string[];
  /** Applied migrations this build does not know: the schema is newer than the code. */
  unknownApplied: number;
}

/** Reads which migrations in folder are applied to the database (none without one). */
export async function schemaStatus(database: Database | undefined, migrationsFolder: string): Promise<SchemaStatus> {
  const files = readMigrationFiles({ migrationsFolder });
  const known = readTags(migrationsFolder);
  const rows = database ? await appliedMillis(database.db) : [];
  const appliedSet = new Set(rows);
  const applied: string[] = [];
  const pending: string[] = [];
  files.forEach((m, i) => (appliedSet.has(m.folderMillis) ? applied : pending).push(known[i] ?? String(m.folderMillis)));
  const knownMillis = new Set(files.map((m) => m.folderMillis));
  return { known, applied, pending, unknownApplied: rows.filter((r) => !knownMillis.has(r)).length };
}

/** Applies pending migrations under an exclusive lock; refuses a schema newer than the code. */
export async function migrateSchema(database: Database, migrationsFolder: string): Promise<string[]> {
  return database.withExclusiveLock(async (db) => {
    const before = await schemaStatus({ ...database, db }, migrationsFolder);
    if (before.unknownApplied > 0) throw new SchemaTooNewError(before.unknownApplied);
    if (before.pending.length === 0) return [];
    const files = readMigrationFiles({ migrationsFolder });
    try {
      if (database.kind === "pglite") await (await import("drizzle-orm/pglite/migrator")).migrate(db as never, { migrationsFolder });
      else await migratePostgres(db as never, { migrationsFolder });
    } catch (e) {
      // drizzle's message names the statement only ("Failed query: CREATE SCHEMA ..."): the reason
      // (a role that may not create, a lock timeout) is the database's.
      const why = pgErrorOf(e).code === INSUFFICIENT_PRIVILEGE ? MIGRATING_ROLE : await blockedMigrationReason(db, e, files, before.known);
      throw new Error(`migrating the database failed: ${errorReason(e)}${why}`, { cause: e });
    }
    return before.pending;
  });
}

/**
 * What a role refused a migration's CREATE needs (PostgreSQL 15 gives PUBLIC no CREATE on schema
 * public): the start said only `42501: permission denied for schema public`.
 */
const MIGRATING_ROLE = "; migrations need a role that may create in the database and in the schema tern's tables go in " +
  "(GRANT CREATE ON DATABASE ... and GRANT CREATE ON SCHEMA public TO it), or apply them first with tern admin db migrate as the database's owner";

/** The database holds migrations this build does not know. */
export class SchemaTooNewError extends Error {
  override name = "SchemaTooNewError";
  constructor(count: number) {
    super(schemaTooNewMessage(count));
  }
}

async function appliedMillis(db: Db): Promise<number[]> {
  const exists = await db.execute(sql`select to_regclass('drizzle.__drizzle_migrations') is not null as ok`);
  if (!rowsOf(exists)[0]?.ok) return [];
  const rows = rowsOf(await db.execute(sql.raw(`select created_at from ${JOURNAL} order by created_at`)));
  return rows.map((r) => Number(r.created_at));
}

function readTags(folder: string): string[] {
  // readMigrationFiles does not return tags; the journal beside it does.
  const { entries } = JSON.parse(readJournal(folder)) as { entries: { tag: string }[] };
  return entries.map((e) => e.tag);
}

function readJournal(folder: string): string {
  return readFileSync(join(folder, "meta", "_journal.json"), "utf8");
}
