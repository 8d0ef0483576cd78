import { afterAll, beforeAll } from "bun:test";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import type { DescService } from "@bufbuild/protobuf";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseConfig } from "../../src/config/load";
import type { Config } from "../../src/config/schema";
import { createLogger } from "../../src/observability/log";
import { openDatabase, type Database } from "../../src/persistence/database";
import { migrateSchema } from "../../src/persistence/migrate";
import { createTernServer, type ServerOptions, type TernServer } from "../../src/server";
import { createTestDatabase } from "./postgres";
import type { StoreKind } from "./stores";
import { serverStartTimeout } from "./timeouts";

export const migrationsFolder = fileURLToPath(new URL("../../drizzle", import.meta.url));

export interface TestClusterOptions {
  store: StoreKind;
  name?: string;
  initialFailoverVersion?: number;
  failoverVersionIncrement?: number;
  enableGlobalNamespace?: boolean;
  shards?: number;
  /** persistence.datastore.postgres.lockTimeoutMs (PostgreSQL only; default: the server's). */
  lockTimeoutMs?: number;
  /** persistence.datastore.postgres.statementTimeoutMs (PostgreSQL only; default: the server's). */
  statementTimeoutMs?: number;
  /** Extra YAML merged over the generated config (top-level keys). */
  extraYaml?: string;
  /** Reuse this data location (restart tests): a PGlite dir or a PostgreSQL URL. */
  dataLocation?: string;
  serverOptions?: Partial<ServerOptions>;
}

/** A real tern server in this process, listening on a free port. */
export interface TestCluster {
  name: string;
  url: string;
  server: TernServer;
  config: Config;
  /** Where its data lives, to restart on it. */
  dataLocation: string;
  client<S extends DescService>(service: S): Client<S>;
  /** Stops the server; the data stays for a restart. */
  stop(): Promise<void>;
  /** Stops the server and removes its data. */
  destroy(): Promise<void>;
}

/** YAML for one test cluster. */
export function testConfigYaml(o: TestClusterOptions & { dataLocation: string; port?: number }): string {
  const name = o.name ?? "active";
  const timeouts = [o.lockTimeoutMs === undefined ? "" : `, lockTimeoutMs: ${o.lockTimeoutMs}`, o.statementTimeoutMs === undefined ? "" : `, statementTimeoutMs: ${o.statementTimeoutMs}`].join("");
  const store = o.store === "pglite" ? `pglite: { dataDir: "${o.dataLocation}" }` : `postgres: { url: "${o.dataLocation}", maxConnections: 8${timeouts} }`;
  return `
clusterMetadata:
  enableGlobalNamespace: ${o.enableGlobalNamespace ?? true}
  failoverVersionIncrement: ${o.failoverVersionIncrement ?? 100}
  masterClusterName: ${name}
  currentClusterName: ${name}
  clusterInformation:
    ${name}: { enabled: true, initialFailoverVersion: ${o.initialFailoverVersion ?? 1}, rpcAddress: "127.0.0.1:${o.port ?? 0}" }
persistence:
  numHistoryShards: ${o.shards ?? 4}
  datastore: { ${store} }
services:
  frontend:
    rpc: { bindOnIP: 127.0.0.1, port: ${o.port ?? 0} }
log: { level: ${process.env.TERN_TEST_LOG ?? "error"} }
${o.extraYaml ?? ""}`;
}

/** PGlite dirs made by newDataLocation that no server has opened yet. */
const freshDirs = new Set<string>();
let template: Promise<Blob> | undefined;

/**
 * A migrated, empty PGlite data dir as a tarball: a new dir loads it in ~0.5 s where
 * initdb plus migrations take ~3 s (STACK.md).
 */
function pgliteTemplate(): Promise<Blob> {
  template ??= (async () => {
    const { PGlite } = await import("@electric-sql/pglite");
    const { drizzle } = await import("drizzle-orm/pglite");
    const { migrate } = await import("drizzle-orm/pglite/migrator");
    const client = await PGlite.create();
    await migrate(drizzle(client), { migrationsFolder });
    const dump = await client.dumpDataDir("none");
    await client.close();
    return dump;
  })();
  return template;
}

/** Makes a data location for a store: a temp PGlite dir or a new PostgreSQL database. */
export async function newDataLocation(store: StoreKind): Promise<{ location: string; remove(): Promise<void> }> {
  if (store === "pglite") {
    const dir = mkdtempSync(join(tmpdir(), "tern-test-"));
    freshDirs.add(dir);
    return { location: dir, remove: async () => rmSync(dir, { recursive: true, force: true }) };
  }
  const db = await createTestDatabase();
  return { location: db.url, remove: db.drop };
}

/**
 * In a describe: a migrated database of the store, opened directly (no server) before its
 * tests and removed after them. Its hooks have a server start's time, whatever the file's
 * default: a PGlite's open and migration took past 60 s on a loaded 2-core host.
 */
export function useTestDatabase(store: StoreKind): { readonly database: Database } {
  let opened: Awaited<ReturnType<typeof openTestDatabase>> | undefined;
  beforeAll(async () => {
    opened = await openTestDatabase(store);
  }, serverStartTimeout);
  afterAll(() => opened?.close(), serverStartTimeout);
  return {
    get database() {
      if (!opened) throw new Error("the test database opens in beforeAll");
      return opened.database;
    },
  };
}

/** A migrated database of the store, opened directly (no server); close() closes and removes it. */
export async function openTestDatabase(store: StoreKind): Promise<{ database: Database; close(): Promise<void> }> {
  const location = await newDataLocation(store);
  const database = await openDatabase(store === "postgres" ? { postgres: { url: location.location } } : { pglite: { dataDir: `${location.location}/data` } });
  await migrateSchema(database, migrationsFolder);
  return {
    database,
    close: async () => {
      await database.close();
      await location.remove();
    },
  };
}

/** Starts a real server (Bun.serve on a free port) over a fresh or given datastore. */
export async function startTestCluster(o: TestClusterOptions): Promise<TestCluster> {
  const owned = o.dataLocation ? undefined : await newDataLocation(o.store);
  const dataLocation = o.dataLocation ?? owned!.location;
  const config = parseConfig(testConfigYaml({ ...o, dataLocation }));
  const fresh = o.store === "pglite" && freshDirs.delete(dataLocation);
  const server = await createTernServer(config, {
    migrationsFolder,
    log: createLogger({ level: config.log.level }),
    ...(fresh ? { database: { loadDataDir: await pgliteTemplate() } } : {}),
    ...o.serverOptions,
  });
  const http = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: server.fetch, idleTimeout: 0 });
  const url = `http://127.0.0.1:${http.port}`;
  const transport = createConnectTransport({ baseUrl: url });
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await http.stop(true);
    await server.close();
  };
  return {
    name: config.clusterMetadata.currentClusterName,
    url,
    server,
    config,
    dataLocation,
    client: (service) => createClient(service, transport),
    stop,
    async destroy() {
      await stop();
      await owned?.remove();
    },
  };
}
