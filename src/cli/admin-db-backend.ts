import { fileURLToPath } from "node:url";
import type { Env } from "../config/env";
import type { Config, DatastoreConfig } from "../config/schema";
import type { Database } from "../persistence/database";
import type { SchemaStatus } from "../persistence/migrate";

/** The database operations behind `tern admin db`; injected so tests need no database. */
export interface AdminDbBackend {
  readEnv(): Env;
  resolveConfigPath(argv: readonly string[], env: Env): string;
  loadConfig(path: string, env: Env): Config;
  openDatabase(store: DatastoreConfig): Promise<Database>;
  /** Applies pending migrations with the checks a server's start makes (the database's encoding, the role's privileges). */
  migrateSchema(database: Database, migrationsFolder: string): Promise<string[]>;
  /** Without a database (none made yet): every migration pending. */
  schemaStatus(database: Database | undefined, migrationsFolder: string): Promise<SchemaStatus>;
  /** A database URL without its password, for messages. */
  redactUrl(url: string): string;
  /** The repo's drizzle/ folder. */
  migrationsFolder: string;
}

/** The repo's migrations, found relative to this file (src/cli/ → drizzle/). */
export function defaultMigrationsFolder(): string {
  return fileURLToPath(new URL("../../drizzle", import.meta.url));
}

/**
 * The real backend. Imported lazily so that RPC commands never load the database
 * drivers (PGlite's WebAssembly is slow to start).
 */
export async function loadAdminDbBackend(): Promise<AdminDbBackend> {
  const [env, load, database, migrate, checked, postgresUrl] = await Promise.all([
    import("../config/env"),
    import("../config/load"),
    import("../persistence/database"),
    import("../persistence/migrate"),
    import("../persistence/checked-migrate"),
    import("../persistence/postgres-url"),
  ]);
  return {
    readEnv: env.readEnv,
    resolveConfigPath: load.resolveConfigPath,
    loadConfig: load.loadConfig,
    openDatabase: (store) => database.openDatabase(store, { maxConnections: 2 }),
    migrateSchema: (db, folder) => checked.migrateChecked(db, folder),
    schemaStatus: migrate.schemaStatus,
    redactUrl: postgresUrl.redactUrl,
    migrationsFolder: defaultMigrationsFolder(),
  };
}
