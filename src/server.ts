import { sql } from "drizzle-orm";
import type { Hono } from "hono";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { bootstrapCluster, type CurrentCluster } from "./cluster/bootstrap";
import { createClusterDirectory } from "./cluster/directory";
import { createRemoteClientPool } from "./cluster/remote-client";
import { createRemoteClusters } from "./cluster/remote-clusters";
import { createHistoryApplier, type HistoryApplier } from "../replication/applier";
import { createReplicationDlq } from "../replication/dlq";
import { createDlqMerge } from "../replication/dlq-merge";
import { createReplicationVerifier } from "../replication/verification";
import { createBackfillReceiver } from "../replication/backfill-receiver";
import { createReplicationCleanup } from "../replication/cleanup";
import { createGracefulFailover, resetAbandonedHandovers } from "../replication/failover";
import { createReplicationManager } from "../replication/manager";
import { createNamespaceReceiver } from "../replication/namespace-receiver";
import { createNamespaceSender, NAMESPACE_QUEUE_KEY } from "../replication/namespace-sender";
import { createHistoryReceiver, type RetryPolicy } from "../replication/receiver";
import { createReplicationSender } from "../replication/sender";
import { createReplicationStatus } from "../replication/status";
import type { Config } from "./config/schema";
import { createAdminHandler } from "./frontend/admin-handler";
import { createBackfillHandler } from "./frontend/backfill-handler";
import { createApp } from "./frontend/app";
import { createHealthHandler } from "./frontend/health-handler";
import { createForwardingWorkflowService } from "./frontend/forwarding";
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
  /** Replication knobs and fault injection (tests). */
  replication?: {
    /** Retry budget of a failing history task before it goes to the DLQ. */
    retry?: Partial<RetryPolicy>;
    /** Wraps the history applier, e.g. to fail one execution on purpose. */
    wrapApplier?: (applier: HistoryApplier) => HistoryApplier;
  };
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
    await resetAbandonedHandovers(database.db, log);
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
  const notifier = createEventNotifier();
  // Becoming active (a failover here or replicated from a peer): due timers fire here now.
  const onActivated = () => void timers.rescan();
  const namespaces = createNamespaceRegistry({
    db, clusters, now, onReplicated: () => notifier.notify(NAMESPACE_QUEUE_KEY), onActivated,
  });
  const writer = createWriter({ db, cluster, limits: config.limits, metrics, log, now, beforeCommit: opts.beforeCommit, notifier });
  const baseApplier = createHistoryApplier({ cluster, namespaces });
  const applier = opts.replication?.wrapApplier?.(baseApplier) ?? baseApplier;
  const dlq = createReplicationDlq({ db, metrics });
  const historyReceiver = createHistoryReceiver({ db, cluster, writer, notifier, metrics, log, applier, dlq, retry: opts.replication?.retry });
  const backfill = createBackfillReceiver({ db, applier, namespaces, writer, notifier, log, now });
  const namespaceReceiver = createNamespaceReceiver({
    db, currentCluster: cluster.clusterName, namespaces, log, metrics, now, onActivated, onBackfillStarted: backfill.wake,
  });
  const replication = createReplicationManager({
    db, clients: remoteClients, log,
    streamsFor: (remote) => [namespaceReceiver, ...historyReceiver.streamsFor(remote), backfill.stream],
  });
  const remotes = createRemoteClusters({ db, current: cluster, clients: remoteClients, onChanged: () => replication.refresh() });
  const replicationCleanup = createReplicationCleanup({ db, log });
  const replicationSender = createReplicationSender({ db, cluster, notifier });
  const replicationStatus = createReplicationStatus({
    db, cluster, connectionState: (name) => replication.connectionState(name), inboundProgress: historyReceiver.progress,
    dlqSizes: dlq.sizes,
  });
  const timers = createTimerQueue({ db, writer, namespaces, notifier, metrics, log, currentCluster: cluster.clusterName, now });
  const engine = createHistoryEngine({
    db, cluster, limits: config.limits, metrics, log, now, namespaces, notifier, writer,
    onTimerCreated: (at) => timers.scheduled(at),
  });
  const queries = createHistoryQueries({ db, namespaces, notifier });
  let closed = false;
  const isServing = async () => !closed && (await db.execute(sql`select 1`).then(() => true, () => false));
  const routes = createRoutes({
    workflow: createForwardingWorkflowService({
      inner: createWorkflowHandler({ namespaces, engine, queries }),
      policy: config.dcRedirectionPolicy.policy, namespaces, clusters, clients: remoteClients,
    }),
    operator: createOperatorHandler({
      db, clusters, namespaces, remotes, version: VERSION,
      connectionState: (name) => replication.connectionState(name),
      clients: remoteClients,
      failover: createGracefulFailover({ db, namespaces, clusters, notifier, log, now, onReplicated: () => notifier.notify(NAMESPACE_QUEUE_KEY) }),
    }),
    admin: createAdminHandler({ db, cluster, sender: replicationSender, status: replicationStatus,
      namespaceSender: createNamespaceSender({ db, wake: notifier }),
      dlq,
      dlqMerge: createDlqMerge({ db, dlq, applier, writer, clients: remoteClients, notifier, log }),
      verifier: createReplicationVerifier({ db, cluster, clients: remoteClients }),
    }),
    backfill: createBackfillHandler({ db, namespaces }),
    health: createHealthHandler(isServing),
  });
  const limiter = createRateLimiter(config.limits.hostRps, config.limits.namespaceRps);
  const interceptors = [createFrontendInterceptor({ metrics, log, limiter })];
  // Room for a maximal payload plus the rest of the request.
  const readMaxBytes = config.limits.blobSizeLimitError * 2 + 1024 * 1024;
  const app = createApp({ routes, interceptors, metrics, isServing, readMaxBytes });
  timers.start();
  replicationCleanup.start();
  void dlq.refreshGauge().catch((e) => log.warn("reading the replication DLQ size failed", { error: String(e) }));
  void replication.start();
  return {
    config, cluster, database, metrics, log, app, routes, interceptors,
    fetch: (req) => app.fetch(req),
    async close() {
      if (closed) return;
      closed = true;
      await replication.stop();
      await replicationCleanup.stop();
      await replicationSender.stop();
      await timers.stop();
      await database.close();
    },
  };
}
