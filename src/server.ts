import { resolve } from "node:path";
import type { Hono } from "hono";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { bootstrapCluster, pingIdentity, type CurrentCluster } from "./cluster/bootstrap";
import type { HistoryApplier } from "../replication/applier";
import type { ReplicationVerifierDeps } from "../replication/verification";
import { resetAbandonedHandovers } from "../replication/failover";
import { createPlannerStats } from "./persistence/planner-stats";
import { createPgliteCheckpoints } from "./persistence/pglite-checkpoints";
import type { RetryPolicy } from "../replication/page-applier";
import type { Config } from "./config/schema";
import { startFailure } from "./errors";
import type { PullReplicationTasksRequest } from "./gen/tern/admin/v1/service_pb";
import type { NamespaceDescription } from "./gen/tern/workflow/v1/namespace_pb";
import { createApp } from "./frontend/app";
import { createDeadlineInterceptor } from "./frontend/deadline";
import { createCallFailures } from "./frontend/call-failures";
import { createFrontendInterceptor } from "./frontend/interceptors";
import { createRefuseUnserved, watchRefusals, type RefuseUnserved } from "./frontend/refused-calls";
import { createRateLimiter } from "./frontend/rate-limiter";
import { createServingProbe } from "./frontend/serving-probe";
import { createClientTurnsInterceptor } from "./frontend/client-turns";
import { createStopGate, type StopGate } from "./frontend/stop-gate";
import type { NamespaceRegistry } from "./namespace/registry";
import { createLogger, type Logger } from "./observability/log";
import { startLoopDelaySampler } from "./observability/loop-delay";
import type { Metrics } from "./observability/metrics";
import { DEFAULT_MAX_CONNECTIONS, openDatabase, type Database, type OpenOptions } from "./persistence/database";
import { heldAtStart } from "./persistence/lock";
import { redactUrl } from "./persistence/postgres-url";
import { migrateChecked } from "./persistence/checked-migrate";
import { type Base, wireCore } from "./server-core";
import { wireReplication } from "./server-replication";
import { wireRoutes } from "./server-routes";

export { VERSION } from "./version";

export interface ServerOptions {
  /** The drizzle/ folder of migrations. */
  migrationsFolder: string;
  log?: Logger;
  now?: () => Date;
  /** Test hook inside every history write transaction, just before commit. */
  beforeCommit?: (operation: string) => Promise<void> | void;
  database?: OpenOptions;
  /** When a PGlite database is checkpointed (persistence/pglite-checkpoints.ts; tests make it often). */
  pgliteCheckpoints?: { walBytes?: number; intervalMs?: number };
  /** Wraps the namespace registry, e.g. to count its reads (tests). */
  wrapNamespaces?: (registry: NamespaceRegistry) => NamespaceRegistry;
  /** How long a call forwarded to the active cluster waits for its answer past its own work (default FORWARD_TIMEOUT_MS, 30 s). */
  forwardTimeoutMs?: number;
  /** How long a failover asked of its target waits there for the switch (default SWITCH_HEARD_WAIT_MS, 5 s). */
  switchHeardWaitMs?: number;
  /** Replication knobs (over the config's replication block) and fault injection (tests). */
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
    /** How often the replication task cleanup runs (default 10 s; tests that run its passes themselves make it long). */
    cleanupIntervalMs?: number;
    /** How long a disabled remote holds the replication tasks it has not acked (default 1 h). */
    disabledRemoteGraceMs?: number;
    /** How often the abandoned-HANDOVER reset runs while no namespace was read in HANDOVER (default 30 s; handover-reset.ts). */
    handoverResetIdleMs?: number;
    /** How often replication_dlq_size is read again without an event that changes it (default 10 s). */
    dlqGaugeIntervalMs?: number;
    /** How often the sender re-reads a peer's shards for commits of other processes (default 1 s; tests make it long to see wakes alone). */
    senderRecheckMs?: number;
    /** Most bytes of events per raw history answer this cluster's backfills ask a source for (default 4 MiB). */
    historyPageBytes?: number;
    /** How often held namespace replication tasks are tried again without a namespace delete here (default 60 s). */
    heldRetryMs?: number;
    /** How long an idle backfill stream waits before it reads its jobs again (default 30 s). */
    backfillIdleMs?: number;
    /** Tasks per shard page this cluster asks its remotes for (default 200). */
    pageSize?: number;
    /** Awaited by each AdminService.GetReplicationTasks call before it reads: holds a shard's per-shard pulls (tests). */
    beforeShardPage?: (shardId: number, signal: AbortSignal) => Promise<void>;
    /** Awaited by each AdminService.PullReplicationTasks call, with its request, before it reads: shows a peer's pulls (tests). */
    beforePull?: (req: PullReplicationTasksRequest, signal: AbortSignal) => Promise<void>;
    /** In place of the database's `applies.durable`: what the receiver awaits before it tells a source of its applies (tests). */
    durable?: () => Promise<unknown>;
    /** Awaited before each replicated namespace change (the namespace it carries) is applied: holds this cluster's view of a failover (tests); signal: the stream's stop. */
    beforeNamespaceApply?: (ns: NamespaceDescription, signal: AbortSignal) => Promise<void>;
    /** Verify's budgets (tests make them small, so that a moderate run takes several calls). */
    verify?: Pick<ReplicationVerifierDeps, "sqlDigestBytes" | "pageWorkMs">;
    /** How many times a DLQ merge lists the DLQ (replication/dlq-merge.ts; tests make it 1). */
    dlqMergeRounds?: number;
    /** How many runs of a DLQ merge's transaction take a held run's entries that came since its listing (replication/dlq-merge.ts; tests make it 1). */
    dlqMergeChases?: number;
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
   * The stop as callers see it (frontend/stop-gate.ts): a stopping entry drains (health
   * NOT_SERVING, calls served), then refuses new calls, then waits for the calls in flight to
   * settle before it closes its listeners.
   */
  stopGate: Pick<StopGate, "phase" | "drain" | "refuse" | "settled">;
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

/**
 * What a start says of the database it opens: PostgreSQL's URL (no password), or PGlite's dataDir
 * and, since a relative one is the start directory's, not the config file's, the absolute path.
 */
function openingFields(store: Config["persistence"]["datastore"]): Record<string, string> {
  if ("postgres" in store) return { database: "postgres", url: redactUrl(store.postgres.url) };
  const { dataDir } = store.pglite;
  return dataDir.startsWith("memory://") ? { database: "pglite", dataDir } : { database: "pglite", dataDir, path: resolve(dataDir) };
}

/** Composition root: opens the datastore, migrates, and wires every component. */
export async function createTernServer(config: Config, opts: ServerOptions): Promise<TernServer> {
  const log = opts.log ?? createLogger({ level: config.log.level, fields: { cluster: config.clusterMetadata.currentClusterName } });
  const now = opts.now ?? (() => new Date());
  const store = config.persistence.datastore;
  const failure = (e: unknown) => startFailure(e, ("postgres" in store && store.postgres.maxConnections) || DEFAULT_MAX_CONNECTIONS);
  // A first start on PGlite makes its database (seconds, more on a busy machine): say what it works on meanwhile.
  log.info("opening the database", openingFields(store));
  const database = await openDatabase(store, { log, ...opts.database }).catch((e: unknown) => {
    throw failure(heldAtStart(e));
  });
  try {
    await migrateChecked(database, opts.migrationsFolder, (migrations) => log.info("applied migrations", { migrations }));
    const cluster = await bootstrapCluster(database.db, config);
    await resetAbandonedHandovers(database.db, log);
    // The file's replication timings (replication:), under what the code gives (tests' hooks and knobs).
    const replication = { ...config.replication, ...opts.replication };
    return wire(config, { ...opts, replication }, { log, now, database, cluster });
  } catch (e) {
    await database.close();
    throw failure(e);
  }
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
  const probe = createServingProbe({ ping: () => pingIdentity(core.db, cluster.clusterId) });
  const gate = createStopGate();
  const isServing = async () => !closed && gate.phase() === "serving" && (await probe());
  const failures = createCallFailures({ metrics: core.metrics, log });
  // Calls connect refuses before the interceptors below (a body that is no message) are counted and logged too.
  const routes = watchRefusals(wireRoutes(base, core, repl, { isServing, stopped: gate.refusing }), { metrics: core.metrics, failures });
  // And calls of a procedure no route serves, on every listener.
  const refuseUnserved = createRefuseUnserved({ metrics: core.metrics, failures });
  const limiter = createRateLimiter(config.limits.hostRps, config.limits.namespaceRps);
  // The deadline innermost: a call past its deadline is still counted, logged and mapped; so is one refused as the server stops.
  const interceptors = [
    createFrontendInterceptor({ metrics: core.metrics, log, failures, limiter, knownNamespace: core.namespaces.known, readNames: core.namespaces.readNames }),
    gate.interceptor,
    createClientTurnsInterceptor(core.turns),
    createDeadlineInterceptor(),
  ];
  // Room for a maximal payload plus the rest of the request.
  const readMaxBytes = config.limits.blobSizeLimitError * 2 + 1024 * 1024;
  const app = createApp({ routes, interceptors, metrics: core.metrics, refuseUnserved, isServing, readMaxBytes });
  const store = config.persistence.datastore;
  // The store's own upkeep: PostgreSQL's planner statistics; PGlite's checkpoints, which nothing else makes.
  const storeUpkeep = "postgres" in store
    ? createPlannerStats({ db: core.db, log, intervalMs: store.postgres.analyzeIntervalMs })
    : createPgliteCheckpoints({ db: core.db, log, ...opts.pgliteCheckpoints });
  const loopDelay = startLoopDelaySampler(core.metrics);
  core.timers.start();
  repl.cleanup.start();
  // PGlite is one process's database: its own failovers hold no lock the reset could see.
  if (database.kind === "postgres") repl.handoverReset.start();
  storeUpkeep.start();
  repl.refreshDlqGauge();
  repl.dlqGauge.start();
  void repl.manager.start();
  repl.sweep.trigger();
  const endLongPolls = async () => {
    await Promise.all([repl.sender.stop(), repl.namespaceSender.stop(), core.queries.stopLongPolls(), repl.failover.stop()]);
  };
  return {
    config, cluster, database, metrics: core.metrics, log, app, routes, interceptors,
    refuseUnserved,
    stopGate: gate,
    fetch: gate.closing((req) => app.fetch(req)),
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
      await repl.dlqGauge.stop();
      await storeUpkeep.stop();
      await endLongPolls(); // before the database closes under them
      await core.timers.stop();
      await database.close();
    },
  };
}
