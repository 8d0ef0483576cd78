import { existsSync } from "node:fs";
import { join } from "node:path";
import type { DatastoreConfig } from "../../config/schema";
import type { Database } from "../../persistence/database";
import type { AdminDbBackend } from "../admin-db-backend";
import { type FlagSpec, getString, type ParsedArgs } from "../args";
import type { CommandContext, GroupCommand, LeafCommand } from "../command";
import { schemaTooNewMessage } from "../../errors";
import { CliError, UsageError } from "../errors";
import { formatTable } from "../output";

const dbFlags: FlagSpec[] = [
  {
    name: "config",
    kind: "string",
    valueName: "PATH",
    description: "Server config file (default: $TERN_CONFIG, then config/development.yaml)",
  },
  {
    name: "database-url",
    kind: "string",
    valueName: "URL",
    description: "PostgreSQL URL to use instead of the config's datastore (no config file needed)",
  },
];

/** The datastore the flags name: --database-url, else the config file's (with env overrides). */
export function datastoreFromArgs(backend: AdminDbBackend, args: ParsedArgs): DatastoreConfig {
  const url = getString(args, "database-url");
  const config = getString(args, "config");
  // Both: one of them is a mistake, and which database was meant is not ours to guess.
  if (url !== undefined && config !== undefined) throw new UsageError("give --config or --database-url, not both (--database-url takes the place of the config's datastore)");
  if (url !== undefined) {
    if (!/^postgres(ql)?:\/\//.test(url)) throw new UsageError("--database-url must be a postgres:// or postgresql:// URL");
    return { postgres: { url } };
  }
  const env = backend.readEnv();
  const path = backend.resolveConfigPath(config === undefined ? [] : ["--config", config], env);
  return backend.loadConfig(path, env).persistence.datastore;
}

/**
 * The migrate command for the datastore these flags named: a bare 'tern admin db migrate' reads
 * config/development.yaml (or $TERN_CONFIG), another database than the one just looked at.
 */
function migrateCommandFor(args: ParsedArgs): string {
  const config = getString(args, "config");
  // A path a shell would split or expand is named by its flag, as the URL is.
  if (config !== undefined) return /^[\w./@%+=:,-]+$/.test(config) ? `'tern admin db migrate --config ${config}'` : "'tern admin db migrate' with the same --config";
  // The URL may hold a password, and the one shown above is masked: name the flag, not the URL.
  if (getString(args, "database-url") !== undefined) return "'tern admin db migrate' with the same --database-url";
  return "'tern admin db migrate'";
}

function describeStore(backend: AdminDbBackend, store: DatastoreConfig): string {
  return "postgres" in store ? `PostgreSQL ${backend.redactUrl(store.postgres.url)}` : `PGlite data dir ${store.pglite.dataDir}`;
}

/** Opens the datastore, runs fn, and always closes it. */
async function withDatabase<T>(
  ctx: CommandContext,
  args: ParsedArgs,
  fn: (backend: AdminDbBackend, database: Database, where: string) => Promise<T>,
): Promise<T> {
  const backend = await ctx.adminDb();
  return openAndRun(backend, datastoreFromArgs(backend, args), fn);
}

async function openAndRun<T>(backend: AdminDbBackend, store: DatastoreConfig, fn: (backend: AdminDbBackend, database: Database, where: string) => Promise<T>): Promise<T> {
  const database = await backend.openDatabase(store);
  try {
    return await fn(backend, database, describeStore(backend, store));
  } finally {
    await database.close();
  }
}

const migrate: LeafCommand = {
  kind: "leaf",
  name: "migrate",
  summary: "Apply pending schema migrations (run before starting a new server version)",
  details: 'With -o json, prints { "datastore": "...", "applied": ["<tag>", ...] }.',
  flags: dbFlags,
  direct: true,
  async run(ctx, args) {
    await withDatabase(ctx, args, async (backend, database, where) => {
      const applied = await backend.migrateSchema(database, backend.migrationsFolder);
      if (ctx.format === "json") return ctx.out(JSON.stringify({ datastore: where, applied }, null, 2) + "\n");
      ctx.out(`Datastore: ${where}\n`);
      for (const tag of applied) ctx.out(`Applied ${tag}\n`);
      ctx.out(applied.length === 0 ? "Schema already up to date\n" : `Schema up to date (${applied.length} migration(s) applied)\n`);
    });
  },
};

const status: LeafCommand = {
  kind: "leaf",
  name: "status",
  summary: "Show which schema migrations are applied and which are pending",
  details:
    'With -o json, prints { "datastore", "known", "applied", "pending", "unknownApplied" }.\n' +
    "unknownApplied > 0 means the database schema is newer than this tern build: it exits 1.",
  flags: dbFlags,
  direct: true,
  async run(ctx, args) {
    const backend = await ctx.adminDb();
    const store = datastoreFromArgs(backend, args);
    // Opening a PGlite dir makes a database there: a look at a mistyped path must not.
    const absent = "pglite" in store && !existsSync(join(store.pglite.dataDir, "PG_VERSION"));
    const show = async (database: Database | undefined, where: string) => {
      const s = await backend.schemaStatus(database, backend.migrationsFolder);
      if (ctx.format === "json") ctx.out(JSON.stringify({ datastore: where, ...s }, null, 2) + "\n");
      else {
        const pending = new Set(s.pending);
        ctx.out(`Datastore: ${where}\n`);
        if (absent) ctx.out(`No database there yet (a server's first start, or ${migrateCommandFor(args)}, makes it); is the path right?\n`);
        ctx.out(formatTable(["MIGRATION", "STATE"], s.known.map((tag) => [tag, pending.has(tag) ? "pending" : "applied"])));
        if (s.unknownApplied === 0) ctx.out(s.pending.length === 0 ? "Schema up to date\n" : `${s.pending.length} pending: run ${migrateCommandFor(args)}\n`);
      }
      // A downgrade: this build must not run against the schema, so a pre-upgrade check has to fail.
      if (s.unknownApplied > 0) {
        throw new CliError(schemaTooNewMessage(s.unknownApplied));
      }
    };
    if (absent) await show(undefined, describeStore(backend, store));
    else await openAndRun(backend, store, (_, database, where) => show(database, where));
  },
};

/** `tern admin db ...`: schema upgrades, straight against the database (no server needed). */
export const adminDbCommand: GroupCommand = {
  kind: "group",
  name: "db",
  summary: "Migrate the database schema and show its status",
  commands: [migrate, status],
};
