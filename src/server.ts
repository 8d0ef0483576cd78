import { sql } from "drizzle-orm";
import type { Hono } from "hono";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { bootstrapCluster, type CurrentCluster } from "./cluster/bootstrap";
import { createClusterDirectory } from "./cluster/directory";
import { createRemoteClientPool } from "./cluster/remote-client";
import { createRemoteClusters } from "./cluster/remote-clusters";
import { createReplicationManager } from "../replication/manager";
import type { Config } from "./config/schema";
import { createAdminHandler } from "./frontend/admin-handler";
import { createApp } from "./frontend/app";
import { createHealthHandler } from "./frontend/health-handler";
import { createFrontendInterceptor } from "./frontend/interceptors";
import { createOperatorHandler } from "./frontend/operator-handler";
import { createRateLimiter } from "./frontend/rate-limiter";
import { createRoutes } from "./frontend/routes";
import { createWorkflowHandler } from "./frontend/workflow-handler";
import { createHistoryEngine } from "./history/engine";
import { createEventNotifier } from "./history/notifier";
import { createHistoryQueries } from "./history/queries";
import { createTimerQueue } from "./history/timer-queue";
import { createWriter } from "./history/writer";
import { createNamespaceRegistry } from "./namespace/registry";
import { createLogger, type Logger } from "./observability/log";
import { createMetrics, type Metrics } from "./observability/metrics";
import { openDatabase, type Database, type OpenOptions } from "./persistence/database";
import { migrateSchema } from "./persistence/migrate";

export const VERSION = "0.1.0";

export interface ServerOptions {
  /** The drizzle/ folder of migrations. */
  migrationsFolder: string;
  log?: Logger;
  now?: () => Date;
  /** Test hook inside every history write transaction, just before commit. */
  beforeCommit?: (operation: string) => Promise<void> | void;
  database?: OpenOptions;
}

/** A running tern cluster minus its listeners: the entry point binds `fetch` and `routes`. */
export interface TernServer {
  config: Config;
  cluster: CurrentCluster;
  database: Database;
  metrics: Metrics;
  log: Logger;
  app: Hono;
  /** The Hono app's fetch, for Bun.serve / Deno.serve / node-server. */
  fetch: (req: Request) => Response | Promise<Response>;
  /** Registers the services on a connect router (native gRPC listener). */
  routes: (router: ConnectRouter) => void;
  /** The interceptors every listener must use. */
  interceptors: Interceptor[];
  close(): Promise<void>;
}

/** Composition root: opens the datastore, migrates, and wires every component. */
export async function createTernServer(config: Config, opts: ServerOptions): Promise<TernServer> {
  const log = opts.log ?? createLogger({ level: config.log.level, fields: { cluster: config.clusterMetadata.currentClusterName } });
  const now = opts.now ?? (() => new Date());
  const database = await openDatabase(config.persistence.datastore, opts.database);
  try {
    const applied = await migrateSchema(database, opts.migrationsFolder);
    if (applied.length) log.info("applied migrations", { migrations: applied });
    const cluster = await bootstrapCluster(database.db, config);
    return wire(config, opts, { log, now, database, cluster });
  } catch (e) {
    await database.close();
    throw e;
  }
}

function wire(
  config: Config,
  opts: ServerOptions,
  { log, now, database, cluster }: { log: Logger; now: () => Date; database: Database; cluster: CurrentCluster },
): TernServer {
  const { db } = database;
  const metrics = createMetrics();
  const clusters = createClusterDirectory(db, cluster);
  const remoteClients = createRemoteClientPool();
  const replication = createReplicationManager({ db, clients: remoteClients, log, streamsFor: () => [] });
  const remotes = createRemoteClusters({ db, current: cluster, clients: remoteClients, onChanged: () => replication.refresh() });
  const namespaces = createNamespaceRegistry({ db, clusters, now });
  const notifier = createEventNotifier();
  const writer = createWriter({ db, cluster, limits: config.limits, metrics, log, now, beforeCommit: opts.beforeCommit });
  const timers = createTimerQueue({ db, writer, namespaces, notifier, metrics, log, currentCluster: cluster.clusterName, now });
  const engine = createHistoryEngine({
    db, cluster, limits: config.limits, metrics, log, now, namespaces, notifier, writer,
    onTimerCreated: (at) => timers.scheduled(at),
  });
  const queries = createHistoryQueries({ db, namespaces, notifier });
  let closed = false;
  const isServing = async () => !closed && (await db.execute(sql`select 1`).then(() => true, () => false));
  const routes = createRoutes({
    workflow: createWorkflowHandler({ namespaces, engine, queries }),
    operator: createOperatorHandler({
      db, clusters, namespaces, remotes, version: VERSION,
      connectionState: (name) => replication.connectionState(name),
    }),
    admin: createAdminHandler({ db, cluster }),
    health: createHealthHandler(isServing),
  });
  const limiter = createRateLimiter(config.limits.hostRps, config.limits.namespaceRps);
  const interceptors = [createFrontendInterceptor({ metrics, log, limiter })];
  // Room for a maximal payload plus the rest of the request.
  const readMaxBytes = config.limits.blobSizeLimitError * 2 + 1024 * 1024;
  const app = createApp({ routes, interceptors, metrics, isServing, readMaxBytes });
  timers.start();
  void replication.start();
  return {
    config, cluster, database, metrics, log, app, routes, interceptors,
    fetch: (req) => app.fetch(req),
    async close() {
      if (closed) return;
      closed = true;
      await replication.stop();
      await timers.stop();
      await database.close();
    },
  };
}
