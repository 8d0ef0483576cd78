import { sql } from "drizzle-orm";
import type { Hono } from "hono";
import { Code, ConnectError, type ConnectRouter, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { bootstrapCluster, type CurrentCluster } from "./cluster/bootstrap";
import { createClusterDirectory } from "./cluster/directory";
import { createRemoteClientPool } from "./cluster/remote-client";
import { createRemoteClusters } from "./cluster/remote-clusters";
import { createHistoryApplier, type HistoryApplier } from "../replication/applier";
import { createConflictSweep } from "../replication/conflict-sweep";
import { createReplicationDlq } from "../replication/dlq";
import { createDlqMerge } from "../replication/dlq-merge";
import { createReplicationVerifier, type ReplicationVerifierDeps } from "../replication/verification";
import { createBackfillReceiver } from "../replication/backfill-receiver";
import { createReplicationCleanup } from "../replication/cleanup";
import { createGracefulFailover, resetAbandonedHandovers } from "../replication/failover";
import { createFailoverTargetCheck } from "../replication/failover-target";
import { createForcedFailoverCheck } from "../replication/forced-failover-check";
import { startBackfillsFrom, stopBackfillsFrom } from "../replication/backfill-jobs";
import { createReplicationManager } from "../replication/manager";
import { createPlannerStats } from "./persistence/planner-stats";
import { createNamespaceReceiver } from "../replication/namespace-receiver";
import { createNamespaceSender, NAMESPACE_QUEUE_KEY } from "../replication/namespace-sender";
import { resendNamespacesTo } from "../replication/namespace-queue";
import { createFailoverMembersCheck } from "../replication/failover-members";
import type { RetryPolicy } from "../replication/page-applier";
import { createHistoryReceiver } from "../replication/receiver";
import { createReplicationSender } from "../replication/sender";
import { createOutboxMarks } from "../replication/outbox";
import { createOutboxTail } from "../replication/outbox-tail";
import { createReplicationStatus } from "../replication/status";
import type { Config } from "./config/schema";
import { loggableError, startFailure } from "./errors";
import { AdminService, type PullReplicationTasksRequest } from "./gen/tern/admin/v1/service_pb";
import type { NamespaceDescription } from "./gen/tern/workflow/v1/namespace_pb";
import { createAdminHandler } from "./frontend/admin-handler";
import { createBackfillHandler } from "./frontend/backfill-handler";
import { createApp } from "./frontend/app";
import { createHealthHandler } from "./frontend/health-handler";
import { createForwardingWorkflowService } from "./frontend/forwarding";
import { createDeadlineInterceptor } from "./frontend/deadline";
import { createCallFailures } from "./frontend/call-failures";
import { createFrontendInterceptor } from "./frontend/interceptors";
import { createRefuseUnserved, watchRefusals, type RefuseUnserved } from "./frontend/refused-calls";
import { createOperatorHandler } from "./frontend/operator-handler";
import { createRateLimiter } from "./frontend/rate-limiter";
import { createRoutes, SERVED_SERVICES } from "./frontend/routes";
import { createServingProbe } from "./frontend/serving-probe";
import { createWorkflowHandler } from "./frontend/workflow-handler";
import { createHistoryEngine } from "./history/engine";
import { createEventNotifier } from "./history/notifier";
import { createHistoryQueries } from "./history/queries";
import { createTimerQueue } from "./history/timer-queue";
import { createWriter } from "./history/writer";
import { createNamespaceRegistry, type NamespaceRecord, type NamespaceRegistry } from "./namespace/registry";
import { createLogger, type Logger } from "./observability/log";
import { startLoopDelaySampler } from "./observability/loop-delay";
import { createMetrics, type Metrics } from "./observability/metrics";
import { DEFAULT_MAX_CONNECTIONS, openDatabase, type Database, type OpenOptions } from "./persistence/database";
import { migrateChecked } from "./persistence/checked-migrate";
import { createPeriodic } from "./periodic";

export const VERSION = "0.1.0";

export interface ServerOptions {
  /** The drizzle/ folder of migrations. */
  migrationsFolder: string;
  log?: Logger;
  now?: () => Date;
  /** Test hook inside every history write transaction, just before commit. */
  beforeCommit?: (operation: string) => Promise<void> | void;
  database?: OpenOptions;
  /** Wraps the namespace registry, e.g. to count its reads (tests). */
  wrapNamespaces?: (registry: NamespaceRegistry) => NamespaceRegistry;
  /** How long a call forwarded to the active cluster waits for its answer past its own work (default FORWARD_TIMEOUT_MS, 30 s). */
  forwardTimeoutMs?: number;
  /** Replication knobs and fault injection (tests). */
  replication?: {
    /** Retry budget of a failing history task before it goes to the DLQ. */
    retry?: Partial<RetryPolicy>;
    /** Wraps the history applier, e.g. to fail one execution on purpose. */
    wrapApplier?: (applier: HistoryApplier) => HistoryApplier;
    /**
     * Asked on each AdminService.PullReplicationTasks call: false answers as a tern from before
     * the call does, not_found "no route for POST ..." (tests of mixed versions).
     */
    servePull?: () => boolean;
    /**
     * Asked on each PullReplicationTasks call with whether it gave cursor_columns: false answers
     * as a tern from before them does (it ignores the columns and does not say it reads them).
     */
    serveCursorColumns?: (asked: boolean) => boolean;
    /**
     * Asked on each AdminService.StreamReplicationTasks call: false answers Unimplemented, as a
     * tern from before the stream does. With servePull or serveCursorColumns set the stream is
     * never served (those emulate terns from before it).
     */
    serveStream?: () => boolean;
    /** How long a source that refused PullReplicationTasks is pulled shard by shard before the call is tried again. */
    reprobeMs?: number;
    /**
     * How long this cluster's streams and long polls ask a source to wait for news: its history
     * streams' (default 10 s) and its polls of a source's namespace queue (default 20 s).
     */
    waitMs?: number;
    /** How long past waitMs a stream may stay silent before it is given up and opened again (default 5 s). */
    silenceGraceMs?: number;
    /** Awaited by this source before each StreamReplicationTasks message goes out: holds a peer's stream (tests). */
    beforeStreamMessage?: (signal: AbortSignal) => Promise<void>;
    /** How long after a peer's last poll of the namespace queue a graceful failover to it is refused at once (default 40 s). */
    namespacePollsLateMs?: number;
    /** How often the sender re-reads a peer's shards for commits of other processes (default 1 s; tests make it long to see wakes alone). */
    senderRecheckMs?: number;
    /** Most bytes of events per raw history answer this cluster's backfills ask a source for (default 4 MiB). */
    historyPageBytes?: number;
    /** Tasks per shard page this cluster asks its remotes for (default 200). */
    pageSize?: number;
    /** Awaited by each AdminService.GetReplicationTasks call before it reads: holds a shard's per-shard pulls (tests). */
    beforeShardPage?: (shardId: number, signal: AbortSignal) => Promise<void>;
    /** Awaited by each AdminService.PullReplicationTasks call, with its request, before it reads: shows a peer's pulls (tests). */
    beforePull?: (req: PullReplicationTasksRequest, signal: AbortSignal) => Promise<void>;
    /** In place of the database's `applies.durable`: what the receiver awaits before it tells a source of its applies (tests). */
    durable?: () => Promise<unknown>;
    /** Awaited before each replicated namespace change (the namespace it carries) is applied: holds this cluster's view of a failover (tests). */
    beforeNamespaceApply?: (ns: NamespaceDescription) => Promise<void>;
    /** Verify's budgets (tests make them small, so that a moderate run takes several calls). */
    verify?: Pick<ReplicationVerifierDeps, "sqlDigestBytes" | "pageWorkMs">;
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
  /** Counts and logs a call to a procedure no route serves, for listeners of their own (native gRPC); returns its request id. */
  refuseUnserved: RefuseUnserved;
  /**
   * Ends the open long polls (peers' replication pulls, history waits): each answers at
   * once with what it has, and new ones are refused as unavailable. Graceful failovers
   * still waiting for their target are abandoned (back to NORMAL) and answer unavailable.
   * A stopping entry calls it before its listeners drain, which would otherwise wait the
   * grace period out on them.
   */
  endLongPolls(): Promise<void>;
  /** How many hooks wait on namespace changes here (tests: calls that ended leave none behind). */
  changedHookCount(): number;
  close(): Promise<void>;
}

/** Composition root: opens the datastore, migrates, and wires every component. */
export async function createTernServer(config: Config, opts: ServerOptions): Promise<TernServer> {
  const log = opts.log ?? createLogger({ level: config.log.level, fields: { cluster: config.clusterMetadata.currentClusterName } });
  const now = opts.now ?? (() => new Date());
  const store = config.persistence.datastore;
  const failure = (e: unknown) => startFailure(e, ("postgres" in store && store.postgres.maxConnections) || DEFAULT_MAX_CONNECTIONS);
  const database = await openDatabase(store, { log, ...opts.database }).catch((e: unknown) => {
    throw failure(e);
  });
  try {
    await migrateChecked(database, opts.migrationsFolder, (migrations) => log.info("applied migrations", { migrations }));
    const cluster = await bootstrapCluster(database.db, config);
    await resetAbandonedHandovers(database.db, log);
    return wire(config, opts, { log, now, database, cluster });
  } catch (e) {
    await database.close();
    throw failure(e);
  }
}

interface Base {
  config: Config;
  opts: ServerOptions;
  log: Logger;
  now: () => Date;
  database: Database;
  cluster: CurrentCluster;
}

/** One cluster's own parts: namespaces, history writes and reads, timers. */
function wireCore({ config, opts, log, now, database, cluster }: Base) {
  const { db } = database;
  const metrics = createMetrics();
  const clusters = createClusterDirectory(db, cluster);
  const notifier = createEventNotifier();
  // Becoming active (a failover here or replicated from a peer): due timers fire here now.
  // Hooks of what is wired later (the conflict sweep, wireReplication).
  const activatedHooks = new Set<(ns: NamespaceRecord) => void>();
  const onActivated = (ns: NamespaceRecord) => {
    void timers.rescan();
    for (const hook of activatedHooks) hook(ns);
  };
  // Every namespace change saved here, replicated or made here: a forwarded failover's wait for its
  // switch reads them (operator-handler.ts), as one that overtook it. A Set: a hook may
  // unsubscribe itself as it is called.
  const changedHooks = new Set<(ns: NamespaceRecord) => void>();
  const onChanged = (ns: NamespaceRecord) => {
    for (const hook of changedHooks) hook(ns);
  };
  const whenChanged = (hook: (ns: NamespaceRecord) => void) => (changedHooks.add(hook), () => void changedHooks.delete(hook));
  const registry = createNamespaceRegistry({
    db, clusters, now, onReplicated: () => notifier.notify(NAMESPACE_QUEUE_KEY), onActivated, onChanged,
  });
  const namespaces = opts.wrapNamespaces?.(registry) ?? registry;
  // Task ids committed per shard: the writer records them, the sender's long polls read them.
  const outboxMarks = createOutboxMarks();
  // The tasks committed here lately, with their events: a caught-up peer is sent them without a read back.
  const outboxTail = createOutboxTail({ currentCluster: cluster.clusterName });
  const writerDeps = {
    db, pipelined: database.pipelined, cluster, limits: config.limits, metrics, log, now, beforeCommit: opts.beforeCommit, notifier, outboxMarks, outboxTail,
  };
  const writer = createWriter(writerDeps);
  // The replication receiver's page transactions, on the applier's own connections (database.ts).
  const applyWriter = database.applies
    ? createWriter({ ...writerDeps, pipelined: database.applies.pipelined, oneStatementDb: database.applies.db })
    : writer;
  if (database.applies?.synchronousBecause) {
    log.warn("replication applies commit synchronously (each waits for its WAL flush)", { reason: database.applies.synchronousBecause });
  }
  const timers = createTimerQueue({ db, writer, namespaces, notifier, metrics, log, currentCluster: cluster.clusterName, now });
  const engine = createHistoryEngine({
    db, cluster, limits: config.limits, metrics, log, now, namespaces, notifier, writer,
    onTimerCreated: (at) => timers.scheduled(at),
  });
  const queries = createHistoryQueries({ db, namespaces, notifier });
  return { db, metrics, clusters, notifier, outboxMarks, outboxTail, onActivated, activatedHooks, onChanged, changedHooks, whenChanged, namespaces, writer, applyWriter, timers, engine, queries };
}

type Core = ReturnType<typeof wireCore>;

/** Replication towards and from remote clusters (replication/). */
function wireReplication({ opts, log, now, cluster, database }: Base, core: Core) {
  const { db, metrics, notifier, namespaces, writer, onActivated, activatedHooks } = core;
  const clients = createRemoteClientPool();
  const baseApplier = createHistoryApplier({ cluster, namespaces, writer, log });
  const applier = opts.replication?.wrapApplier?.(baseApplier) ?? baseApplier;
  const dlq = createReplicationDlq({ db, metrics });
  const historyReceiver = createHistoryReceiver({ db, cluster, writer: core.applyWriter, notifier, metrics, log, applier, dlq, retry: opts.replication?.retry, reprobeMs: opts.replication?.reprobeMs, pageSize: opts.replication?.pageSize,
    waitMs: opts.replication?.waitMs, silenceGraceMs: opts.replication?.silenceGraceMs,
    durable: opts.replication?.durable ?? database.applies?.durable,
  });
  const backfill = createBackfillReceiver({ db, applier, namespaces, writer, notifier, log, now, historyPageBytes: opts.replication?.historyPageBytes });
  const namespaceReceiver = createNamespaceReceiver({
    db, currentCluster: cluster.clusterName, namespaces, log, metrics, now, onActivated, onChanged: core.onChanged, onBackfillStarted: backfill.wake,
    onQueued: () => notifier.notify(NAMESPACE_QUEUE_KEY),
    beforeApply: opts.replication?.beforeNamespaceApply, staleAfterMs: historyReceiver.staleAfterMs, waitTimeoutMs: opts.replication?.waitMs,
  });
  // Becoming active: settle the conflicts resolved while this cluster was passive.
  const sweep = createConflictSweep({ db, cluster, namespaces, writer, applier, log });
  activatedHooks.add((ns) => sweep.trigger(ns.id));
  const manager = createReplicationManager({
    db, clients, log,
    streamsFor: (remote) => [namespaceReceiver, ...historyReceiver.streamsFor(remote), backfill.stream],
  });
  const failover = createGracefulFailover({
    db, namespaces, clusters: core.clusters, notifier, log, now, onReplicated: () => notifier.notify(NAMESPACE_QUEUE_KEY),
    withSessionLock: database.withSessionLock, targetProblem: createFailoverTargetCheck({ clusters: core.clusters, clients }),
    members: createFailoverMembersCheck({ db, clusters: core.clusters, clients }),
    connectionState: (name) => manager.connectionState(name), namespacePollsLateMs: opts.replication?.namespacePollsLateMs,
  });
  const sender = createReplicationSender({
    db, cluster, notifier, metrics, outboxMarks: core.outboxMarks, outboxTail: core.outboxTail, recheckMs: opts.replication?.senderRecheckMs,
  });
  const onChanged = () => {
    sender.forgetPeers();
    // A remote connected now may have been sent namespaces again (resendNamespacesTo).
    notifier.notify(NAMESPACE_QUEUE_KEY);
    return manager.refresh();
  };
  return {
    clients, applier, dlq, manager, backfill, sweep, sender, failover,
    remotes: createRemoteClusters({
      db, current: cluster, clients, onChanged,
      onConnected: async (tx, remote) => {
        await startBackfillsFrom(tx, remote, cluster.clusterName, now());
        await resendNamespacesTo(tx, remote, cluster.clusterName);
      },
      onRemoved: (tx, remote) => stopBackfillsFrom(tx, remote, now()),
    }),
    cleanup: createReplicationCleanup({ db, log, metrics }),
    // A server of this cluster that died mid-failover (another process on the PostgreSQL database)
    // leaves its HANDOVER to the others: reset once its failover's lock is free (resetAbandonedHandovers).
    handoverReset: createPeriodic(() => resetAbandonedHandovers(db, log), {
      name: "abandoned handover reset", log, intervalMs: 2_000, onDone: (reset) => {
        if (reset.length) namespaces.invalidate();
      },
    }),
    namespaceSender: createNamespaceSender({ db, currentCluster: cluster.clusterName, wake: notifier }),
    status: createReplicationStatus({
      db, cluster, connectionState: (name) => manager.connectionState(name), inboundProgress: historyReceiver.progress,
      inboundHeard: historyReceiver.heard, namespaceHeard: namespaceReceiver.heard,
      dlqSizes: dlq.sizes,
    }),
  };
}

type Replication = ReturnType<typeof wireReplication>;

/** The RPC services, behind forwarding where the policy asks for it. */
function wireRoutes({ config, opts, log, now, cluster }: Base, core: Core, repl: Replication, isServing: () => Promise<boolean>) {
  const { db, clusters, namespaces, notifier, engine, queries } = core;
  const { clients, dlq, applier, manager } = repl;
  return createRoutes({
    workflow: createForwardingWorkflowService({
      inner: createWorkflowHandler({ namespaces, engine, queries, checkForcedFailover: createForcedFailoverCheck({ db, namespaces, clusters, clients }) }),
      policy: config.dcRedirectionPolicy.policy, namespaces, clusters, clients, timeoutMs: opts.forwardTimeoutMs,
    }),
    operator: createOperatorHandler({
      db, clusters, namespaces, remotes: repl.remotes, version: VERSION, clients,
      connectionState: (name) => manager.connectionState(name),
      failover: repl.failover, forwardTimeoutMs: opts.forwardTimeoutMs, whenChanged: core.whenChanged,
    }),
    admin: withPullHooks(
      createAdminHandler({
        db, cluster, sender: repl.sender, status: repl.status, dlq,
        namespaceSender: repl.namespaceSender,
        dlqMerge: createDlqMerge({ db, dlq, applier, writer: core.writer, clients, notifier, log }),
        verifier: createReplicationVerifier({ db, cluster, clients, ...opts.replication?.verify }),
      }),
      opts.replication,
    ),
    backfill: createBackfillHandler({ db, namespaces, clusters, now, wake: repl.backfill.wake }),
    health: createHealthHandler(isServing, SERVED_SERVICES),
  });
}

/**
 * admin with the pull test hooks: PullReplicationTasks answers as a tern before it does
 * (not_found "no route for ...") while servePull says false, and as a tern before cursor columns while
 * serveCursorColumns says false; StreamReplicationTasks answers Unimplemented while
 * serveStream says false, and always with either of the others set, and each of its messages
 * waits for beforeStreamMessage; GetReplicationTasks waits for beforeShardPage, and
 * PullReplicationTasks for beforePull.
 */
function withPullHooks(
  admin: ServiceImpl<typeof AdminService>,
  hooks: Pick<NonNullable<ServerOptions["replication"]>, "servePull" | "serveCursorColumns" | "serveStream" | "beforeStreamMessage" | "beforeShardPage" | "beforePull"> = {},
): ServiceImpl<typeof AdminService> {
  const { servePull, serveCursorColumns, serveStream, beforeStreamMessage, beforeShardPage, beforePull } = hooks;
  return {
    ...admin,
    ...((servePull || serveCursorColumns || serveStream || beforeStreamMessage) && {
      async *streamReplicationTasks(r, ctx) {
        if (servePull || serveCursorColumns || (serveStream && !serveStream())) throw new ConnectError("StreamReplicationTasks is not served here", Code.Unimplemented);
        for await (const message of admin.streamReplicationTasks(r, ctx)) {
          await beforeStreamMessage?.(ctx.signal);
          yield message;
        }
      },
    }),
    ...((servePull || serveCursorColumns || beforePull) && {
      async pullReplicationTasks(r, ctx) {
        // What a Connect client reads from a tern before the call: its 404 for an unknown path.
        if (servePull && !servePull()) throw new ConnectError(`no route for POST /${AdminService.typeName}/PullReplicationTasks`, Code.NotFound);
        await beforePull?.(r, ctx.signal);
        if (!serveCursorColumns || serveCursorColumns(r.cursorColumns !== undefined)) return admin.pullReplicationTasks(r, ctx);
        const res = await admin.pullReplicationTasks({ ...r, cursorColumns: undefined }, ctx);
        return { ...res, readsCursorColumns: false };
      },
    }),
    ...(beforeShardPage && {
      async getReplicationTasks(r, ctx) {
        await beforeShardPage(r.shardId, ctx.signal);
        return admin.getReplicationTasks(r, ctx);
      },
    }),
  };
}

function wire(
  config: Config,
  opts: ServerOptions,
  { log, now, database, cluster }: { log: Logger; now: () => Date; database: Database; cluster: CurrentCluster },
): TernServer {
  const base: Base = { config, opts, log, now, database, cluster };
  const core = wireCore(base);
  const repl = wireReplication(base, core);
  let closed = false;
  const probe = createServingProbe({ ping: () => core.db.execute(sql`select 1`) });
  const isServing = async () => !closed && (await probe());
  const failures = createCallFailures({ metrics: core.metrics, log });
  // Calls connect refuses before the interceptors below (a body that is no message) are counted and logged too.
  const routes = watchRefusals(wireRoutes(base, core, repl, isServing), { metrics: core.metrics, failures });
  // And calls of a procedure no route serves, on every listener.
  const refuseUnserved = createRefuseUnserved({ metrics: core.metrics, failures });
  const limiter = createRateLimiter(config.limits.hostRps, config.limits.namespaceRps);
  // The deadline innermost: a call past its deadline is still counted, logged and mapped.
  const interceptors = [createFrontendInterceptor({ metrics: core.metrics, log, failures, limiter, knownNamespace: core.namespaces.known }), createDeadlineInterceptor()];
  // Room for a maximal payload plus the rest of the request.
  const readMaxBytes = config.limits.blobSizeLimitError * 2 + 1024 * 1024;
  const app = createApp({ routes, interceptors, metrics: core.metrics, refuseUnserved, isServing, readMaxBytes });
  const store = config.persistence.datastore;
  const plannerStats = "postgres" in store
    ? createPlannerStats({ db: core.db, log, intervalMs: store.postgres.analyzeIntervalMs })
    : undefined;
  const loopDelay = startLoopDelaySampler(core.metrics);
  core.timers.start();
  repl.cleanup.start();
  // PGlite is one process's database: its own failovers hold no lock the reset could see.
  if (database.kind === "postgres") repl.handoverReset.start();
  plannerStats?.start();
  void repl.dlq.refreshGauge().catch((e) => log.warn("reading the replication DLQ size failed", { error: loggableError(e) }));
  void repl.manager.start();
  repl.sweep.trigger();
  const endLongPolls = async () => {
    await Promise.all([repl.sender.stop(), repl.namespaceSender.stop(), core.queries.stopLongPolls(), repl.failover.stop()]);
  };
  return {
    config, cluster, database, metrics: core.metrics, log, app, routes, interceptors,
    refuseUnserved,
    fetch: (req) => app.fetch(req),
    endLongPolls,
    changedHookCount: () => core.changedHooks.size,
    async close() {
      if (closed) return;
      closed = true;
      loopDelay.stop();
      await repl.sweep.stop();
      await repl.manager.stop();
      await repl.cleanup.stop();
      await repl.handoverReset.stop();
      await plannerStats?.stop();
      await endLongPolls(); // before the database closes under them
      await core.timers.stop();
      await database.close();
    },
  };
}
