import { z } from "zod";
import { parseDurationNanos } from "../cli/duration";
import { MAX_TIMER_MS } from "../sleep";

const ClusterInformation = z.strictObject({
  enabled: z.boolean().default(true),
  /** 0 is allowed only while global namespaces are disabled (the seed's single cluster). */
  initialFailoverVersion: z.number().int().min(0),
  /** Empty: the frontend's bindOnIP:port. */
  rpcAddress: z.string().default(""),
});

const ClusterMetadata = z.strictObject({
  enableGlobalNamespace: z.boolean().default(false),
  failoverVersionIncrement: z.number().int().min(2),
  masterClusterName: z.string().min(1),
  currentClusterName: z.string().min(1),
  clusterInformation: z.record(z.string(), ClusterInformation),
});

const Datastore = z.union([
  z.strictObject({ pglite: z.strictObject({ dataDir: z.string().min(1) }) }),
  z.strictObject({
    postgres: z.strictObject({
      url: z.string().min(1),
      maxConnections: z.number().int().min(1).max(1000).optional(),
      /**
       * How often tern checks its tables' planner statistics and analyzes those whose row count
       * doubled or halved (persistence/planner-stats.ts); 0 never; default 5 s. At most the
       * longest a timer waits (2^31 - 1 ms): a longer one fired after 1 ms, and the check ran
       * back to back, about 200 transactions a second on an idle server.
       */
      analyzeIntervalMs: z.number().int().min(0).max(2 ** 31 - 1).optional(),
      /**
       * How long one of tern's statements waits for a lock another session holds before it fails
       * (UNAVAILABLE to a client, retried by background work); 0 leaves PostgreSQL's own
       * lock_timeout in force; default 10 s (DEFAULT_LOCK_TIMEOUT_MS). PostgreSQL takes up to 2^31 - 1 ms.
       */
      lockTimeoutMs: z.number().int().min(0).max(2 ** 31 - 1).optional(),
      /**
       * How long one of tern's statements may run (its lock waits included) before PostgreSQL
       * cancels it (UNAVAILABLE to a client, naming this setting); 0, the default, leaves
       * PostgreSQL's own statement_timeout in force. Migrations never take it.
       */
      statementTimeoutMs: z.number().int().min(0).max(2 ** 31 - 1).optional(),
      /**
       * How long a start waits for PostgreSQL to accept connections (still starting, as in a
       * docker-compose or systemd boot), retrying with a growing delay; 0 (the default) fails at
       * the first refusal. `--wait-for-database` and TERN_DATABASE_WAIT set it too.
       */
      connectWaitMs: z.number().int().min(0).max(2 ** 31 - 1).optional(),
    }),
  }),
], { error: "must hold one of pglite: { dataDir: PATH } or postgres: { url: URL }" });

const Persistence = z.strictObject({
  numHistoryShards: z.number().int().min(1).max(16384).default(4),
  datastore: Datastore.default({ pglite: { dataDir: "./data" } }),
});

const Rpc = z.strictObject({
  /** An IP address (a host name is taken too); dotted numbers must be a real IPv4 address. */
  bindOnIP: z
    .string()
    .min(1, "must be an IP address; to listen on every interface, 0.0.0.0 (or ::)")
    .refine((ip) => !/^[\d.]+$/.test(ip) || /^((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)$/.test(ip), "must be an IP address such as 127.0.0.1 or 0.0.0.0")
    // `[::1]` and `127.0.0.1:7233` were looked up as host names: "the host name does not resolve".
    .refine((ip) => !/^\[|\]$/.test(ip), "takes an IPv6 address without brackets, e.g. :: or ::1")
    .refine((ip) => !/^[^:]*:\d+$/.test(ip), "takes the address alone; the port goes in services.frontend.rpc.port")
    .default("127.0.0.1"),
  port: z.number().int().min(0).max(65535).default(7233),
  /** Native gRPC (h2c) port. Omitted: port + 1. Equal to port: both on one port (HTTP/2 preface sniffed). */
  grpcPort: z.number().int().min(0).max(65535).optional(),
});

/**
 * How long a stopping server answers health NOT_SERVING while still serving calls, before it
 * refuses new ones: the time its load balancers take to see it unhealthy and stop sending (their
 * check interval times their unhealthy threshold). A duration as Temporal writes one (`10s`,
 * `500ms`, `0`), in ms once parsed; a bare number other than 0 is refused (seconds or ms?).
 */
const ShutdownDrainDuration = z.union([z.string(), z.number()]).transform((given, ctx) => {
  if (given === 0) return 0;
  const invalid = (message: string) => (ctx.addIssue({ code: "custom", message }), z.NEVER);
  if (typeof given === "number") return invalid(`needs a unit: e.g. ${given}s or ${given}ms (0 for no drain)`);
  let ms: number;
  try {
    ms = Number(parseDurationNanos(given) / 1_000_000n);
  } catch {
    return invalid(`invalid duration "${given}" (use e.g. 10s, 500ms, 1m; 0 for no drain)`);
  }
  return ms > MAX_TIMER_MS ? invalid(`${given} is longer than the longest wait, 2147483647 ms (about 24 days)`) : ms;
});

const Frontend = z.strictObject({
  rpc: Rpc.default({ bindOnIP: "127.0.0.1", port: 7233 }),
  /** ms; default 0: no drain, for a server no load balancer checks (a stop then only refuses new calls while those in flight finish). */
  shutdownDrainDuration: ShutdownDrainDuration.default(0),
});

/** A token bucket; `{ rps: 0 }` alone disables it (a burst then means nothing: left out or 0 is taken). */
const RateLimit = z
  .strictObject({
    /** Requests per second; 0 disables the limit. */
    rps: z.number().min(0),
    burst: z.number().int().min(0).optional(),
  })
  .refine((l) => l.rps === 0 || (l.burst ?? 0) >= 1, {
    path: ["burst"],
    message: "is required (number), at least 1, while rps is above 0 (rps 0 disables the limit)",
  })
  .transform((l) => ({ rps: l.rps, burst: l.burst ?? 0 }));

const Limits = z.strictObject({
  // At most 1 GiB: a request is read up to twice this plus 1 MiB, and Connect takes no read
  // limit past 4 GiB - 1 (the server failed at its listener, the database already migrated).
  blobSizeLimitError: z.number().int().min(1).max(2 ** 30).default(2 * 1024 * 1024),
  blobSizeLimitWarn: z.number().int().min(1).default(512 * 1024),
  historyCountLimitError: z.number().int().min(1).default(51_200),
  historyCountLimitWarn: z.number().int().min(1).default(10_240),
  hostRps: RateLimit.default({ rps: 2400, burst: 4800 }),
  namespaceRps: RateLimit.default({ rps: 2400, burst: 4800 }),
});

/** A timer's period in ms: at least 100 (less loops the work back to back), at most the longest a timer waits. */
const timerMs = () => z.number().int().min(100).max(MAX_TIMER_MS).optional();

/**
 * Replication timings an operator may tune (README, "replication"); left out, the server's
 * defaults (src/server.ts, ServerOptions.replication). Test hooks stay code options.
 */
const Replication = z.strictObject({
  /**
   * A failing history task's retries before it goes to the DLQ (replication/page-applier.ts): the
   * tasks of its shard behind it wait meanwhile, so attempts stay few.
   */
  retry: z.strictObject({
    /** Attempts in all (default 5); the last failure sends the task to the DLQ. */
    attempts: z.number().int().min(1).max(100).optional(),
    /** The first wait between attempts (default 200 ms), doubled at each up to maxBackoffMs (default 2 s). */
    backoffMs: z.number().int().min(0).max(MAX_TIMER_MS).optional(),
    maxBackoffMs: z.number().int().min(0).max(MAX_TIMER_MS).optional(),
  }).optional(),
  /**
   * How long this cluster's streams and long polls ask a source to wait for news (default 10 s
   * for histories, 20 s for the namespace queue). At most 30 s: a source holds none longer
   * (namespace-sender.ts MAX_WAIT_MS), and peers refuse a failover to a cluster not heard past it.
   */
  waitMs: z.number().int().min(100).max(30_000).optional(),
  /** How long past waitMs a silent stream is kept before it is opened again (default 5 s). */
  silenceGraceMs: z.number().int().min(100).max(600_000).optional(),
  /** How often acked replication tasks are deleted and replication_outbound_tasks_lag is set (default 10 s). */
  cleanupIntervalMs: timerMs(),
  /**
   * How long a remote may stay disabled and still hold this cluster's replication tasks (default
   * 1 h): past it the cleanup deletes them past its ack, and it repairs by backfill once enabled.
   */
  disabledRemoteGraceMs: timerMs(),
  /** How often held namespace replication tasks are tried again without a namespace delete here (default 60 s). */
  heldRetryMs: timerMs(),
  /** How long an idle backfill stream waits before it reads its jobs again (default 30 s). */
  backfillIdleMs: timerMs(),
  /** How often replication_dlq_size is read again without an event that changes it (default 10 s): it mends a read that failed. */
  dlqGaugeIntervalMs: timerMs(),
  /** Tasks per shard page asked of a remote (default 200); a source sends at most 1000. */
  pageSize: z.number().int().min(1).max(1000).optional(),
  /** Most bytes of events per raw history page a backfill asks for (default 4 MiB, which a source never exceeds). */
  historyPageBytes: z.number().int().min(1).max(4 << 20).optional(),
});

export const LogLevel = z.enum(["debug", "info", "warn", "error"]);
export type LogLevel = z.infer<typeof LogLevel>;

export const RedirectionPolicy = z.enum(["noop", "selected-apis-forwarding", "all-apis-forwarding"]);
export type RedirectionPolicy = z.infer<typeof RedirectionPolicy>;

/** The whole server config, as read from YAML; cross-field rules are in validate.ts. */
export const Config = z.strictObject({
  clusterMetadata: ClusterMetadata,
  persistence: Persistence.default({ numHistoryShards: 4, datastore: { pglite: { dataDir: "./data" } } }),
  services: z
    .strictObject({ frontend: Frontend })
    .default({ frontend: { rpc: { bindOnIP: "127.0.0.1", port: 7233 }, shutdownDrainDuration: 0 } }),
  dcRedirectionPolicy: z.strictObject({ policy: RedirectionPolicy.default("noop") }).default({ policy: "noop" }),
  limits: Limits.default(Limits.parse({})),
  log: z.strictObject({ level: LogLevel.default("info") }).default({ level: "info" }),
  replication: Replication.default({}),
});
export type Config = z.infer<typeof Config>;
export type DatastoreConfig = Config["persistence"]["datastore"];
export type LimitsConfig = Config["limits"];
