import type { PgDatabase, PgQueryResultHKT } from "drizzle-orm/pg-core";
import { drizzle as drizzlePostgres } from "drizzle-orm/postgres-js";
import postgres from "postgres";
import type { DatastoreConfig } from "../config/schema";
import { connectWithin } from "./connect-wait";
import { checkPostgresUrl, hostParameter, oneHost, redactUrl, tlsParameters, tlsRefusedHint, type TlsOption } from "./postgres-url";
import { requireMendedDriver } from "./driver-mends";
import type { Logger } from "../observability/log";
import { acquireDataDirLock, checkDataDir, type DataDirLock } from "./lock";
import { prepareFirstStart } from "./pglite-first-start";
import { yieldTurns } from "./pglite-turns";
import { createPipelinedTransactions, type PipelinedTransactions } from "./pipelined-tx";
import * as schema from "./schema";

/** Drizzle over either driver; verbs only use what both share. */
export type Db = PgDatabase<PgQueryResultHKT, typeof schema>;
export type Tx = Parameters<Parameters<Db["transaction"]>[0]>[0];

/** An open datastore: the drizzle handle plus how to close it. */
/**
 * A lock withSessionLock holds. lost fires once its connection is seen closed (a restart of
 * PostgreSQL, an operator's terminate): the lock is gone. That close reaches this process some
 * time after it happened, so check() asks the lock's session itself, and throws lost's reason
 * (firing it) where the session is not the one that took the lock: before an act the lock
 * guards, a lost lock is then known for certain, not only once the close has come.
 */
export interface HeldLock {
  lost: AbortSignal;
  check(): Promise<void>;
}

/** The lock of a database only this process opens (PGlite): never lost. */
const heldForGood = (): HeldLock => ({ lost: new AbortController().signal, check: async () => {} });

export interface Database {
  db: Db;
  kind: "pglite" | "postgres";
  /** PostgreSQL: transactions in two round trips (pipelined-tx.ts); PGlite has no round trips to save. */
  pipelined?: PipelinedTransactions;
  /**
   * PostgreSQL: connections of the replication applier's own, for its hand-written statements
   * (see openPostgres). Their commits do not wait for the WAL flush; `durable` makes every
   * apply committed before it durable, and the receiver calls it before it tells a source what
   * was applied. It resolves to what names the PostgreSQL instance's run (openPostgres): a flush
   * on an instance that restarted since the applies makes durable only what the restart left.
   */
  applies?: {
    db: Db;
    pipelined: PipelinedTransactions;
    durable(): Promise<unknown>;
    /** Set when the applies commit synchronously after all: why (the flush `durable` needs was refused). */
    synchronousBecause?: string;
  };
  /** Runs fn holding a cluster-wide lock (migrations), on PostgreSQL an advisory lock. */
  withExclusiveLock<T>(fn: (db: Db) => Promise<T>): Promise<T>;
  /**
   * Runs fn holding the advisory lock hashtextextended(key, 0) on a connection of its own
   * (PostgreSQL): other server processes on the database see it taken until fn ends or this
   * process dies. Rejects with taken() when another session holds it. fn gets the lock as
   * HeldLock. PGlite is one process's database: fn alone, the lock never lost.
   */
  withSessionLock<T>(key: string, fn: (lock: HeldLock) => Promise<T>, taken: () => Error): Promise<T>;
  close(): Promise<void>;
}

/** How long a connection's startup may take, s (postgres.js's connect_timeout). */
const CONNECT_TIMEOUT_S = 10;

/** Connections a server opens to PostgreSQL at most, unless `persistence.datastore.postgres.maxConnections` says otherwise. */
export const DEFAULT_MAX_CONNECTIONS = 8;

export interface OpenOptions {
  /** postgres.js pool size (default DEFAULT_MAX_CONNECTIONS). */
  maxConnections?: number;
  /** PostgreSQL's lock_timeout for tern's sessions, ms (default DEFAULT_LOCK_TIMEOUT_MS; 0: PostgreSQL's own). */
  lockTimeoutMs?: number;
  /** How long a start waits for PostgreSQL to accept connections, ms (default 0: it fails at the first refusal). */
  connectWaitMs?: number;
  /** PostgreSQL's statement_timeout for tern's sessions but migrations', ms (default 0: PostgreSQL's own). */
  statementTimeoutMs?: number;
  /** A PGlite data dir snapshot (tar from dumpDataDir) to start from, for tests. */
  loadDataDir?: Blob;
  /** Told of what opening did to the data (a half-made PGlite database made again). */
  log?: Logger;
  /** Ends a wait for PostgreSQL (connectWaitMs) at once: the server was told to stop while it waited. */
  signal?: AbortSignal;
}

/** Opens the configured datastore; a PGlite dir is locked against a second process. */
export async function openDatabase(store: DatastoreConfig, opts: OpenOptions = {}): Promise<Database> {
  if ("postgres" in store) {
    const { maxConnections, lockTimeoutMs, statementTimeoutMs, connectWaitMs } = store.postgres;
    return openPostgres(store.postgres.url, { maxConnections, lockTimeoutMs, statementTimeoutMs, connectWaitMs, ...opts });
  }
  return openPglite(store.pglite.dataDir, opts);
}

async function openPglite(dataDir: string, opts: OpenOptions): Promise<Database> {
  const inMemory = dataDir.startsWith("memory://");
  if (!inMemory) checkDataDir(dataDir);
  const lock: DataDirLock | undefined = inMemory ? undefined : acquireDataDirLock(dataDir);
  try {
    // Imported here: a server on PostgreSQL never loads PGlite (2.3 MB less resident after start; 60-90 ms of import).
    const [{ PGlite }, { drizzle: drizzlePglite }] = await Promise.all([import("@electric-sql/pglite"), import("drizzle-orm/pglite")]);
    const firstStart = inMemory ? undefined : prepareFirstStart(dataDir);
    if (firstStart?.removed.length) {
      opts.log?.warn("the PGlite database's first start was interrupted before it was made whole; making it again", { dataDir, removed: firstStart.removed });
    }
    const client = await PGlite.create(inMemory ? undefined : dataDir, { loadDataDir: opts.loadDataDir }).catch((e: Error) => {
      throw new Error(`PGlite could not open its data directory ${dataDir} (persistence.datastore.pglite.dataDir): ${e.message}`);
    });
    firstStart?.done();
    const db = drizzlePglite(yieldTurns(client), { schema }) as unknown as Db;
    return {
      db,
      kind: "pglite",
      withExclusiveLock: (fn) => fn(db),
      withSessionLock: (_key, fn) => fn(heldForGood()),
      async close() {
        await client.close();
        lock?.release();
      },
    };
  } catch (e) {
    lock?.release();
    throw e;
  }
}

/**
 * How long a statement of tern's waits for a lock before PostgreSQL fails it (55P03, which
 * clients get as UNAVAILABLE and background work retries). Without a bound, a transaction
 * left open elsewhere (an operator's session idle in a transaction, a long DDL) held every
 * write that needed its rows until it ended, and those writes held the pool's connections,
 * so every other request of the cluster, replication's included, waited behind them.
 */
export const DEFAULT_LOCK_TIMEOUT_MS = 10_000;

/**
 * The startup parameters for lockTimeoutMs and statementTimeoutMs: none for one at 0, so
 * PostgreSQL's own setting holds. No statement timeout by default: some of tern's statements
 * legitimately run long on a large database (a namespace delete's DELETE of all its events,
 * ANALYZE of a large table, a replication verify's checksums), and none waits on purpose (long
 * polls wait in the server, not in a statement).
 */
function sessionTimeouts(opts: OpenOptions): { lock_timeout?: number; statement_timeout?: number } {
  const { lockTimeoutMs = DEFAULT_LOCK_TIMEOUT_MS, statementTimeoutMs = 0 } = opts;
  return { ...(lockTimeoutMs > 0 && { lock_timeout: lockTimeoutMs }), ...(statementTimeoutMs > 0 && { statement_timeout: statementTimeoutMs }) };
}

async function openPostgres(configured: string, opts: OpenOptions): Promise<Database> {
  requireMendedDriver();
  checkPostgresUrl(configured);
  const { url: hosted, ...listed } = hostParameter(configured);
  const { url, ssl } = tlsParameters(hosted, oneHost(hosted, listed.host));
  // postgres.js takes host and port lists (its multi-host form), which its types do not say.
  const at = { ...listed, ...(ssl && { ssl }) } as { host?: string; port?: number; ssl?: TlsOption };
  const options = {
    ...at,
    // Eight by default. With 32, at 250-500 writes/s, A's PostgreSQL spent 1.4x the CPU per
    // write and the replication lag p99 was 1.5-1.9x as long, with no more writes at
    // saturation (bench/README.md). Likely, not proven: postgres.js handed out its idle
    // connections oldest first (mended since: the last idle first, scripts/patch-dependencies.mjs,
    // mend 8), so each write woke a backend asleep since its last turn, and more writes
    // queue inside PostgreSQL on a shard's row, where here they queue in the pool.
    max: opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
    onnotice: () => {},
    // postgres.js counts every connection that closed with an error towards one shared retry
    // count and waits (0.5-1) x min(3^count / 100, 20) s before reconnecting: a restart that
    // resets the pool's connections could leave it 10-20 s without one, PostgreSQL long back.
    backoff: reconnectDelaySeconds,
    // How long a connection's startup may take (default 30 s). A startup that never got sent
    // (scripts/patch-dependencies.mjs mends the postgres.js defect that did it) waited this long.
    connect_timeout: CONNECT_TIMEOUT_S,
    connection: { application_name: "tern", ...sessionTimeouts(opts) },
  };
  // Clients per attempt: postgres.js's own reconnects back off by its shared retry count.
  // An attempt within a wait that has less than the connect timeout left gives up when it runs
  // out: a black-holed address otherwise ended a 5 s wait 10 s late. Not by a shorter
  // connect_timeout: the client that connects is the pool for good, and keeps the 10 s.
  // First a session as the role's settings leave it, for its idle_session_timeout (idleSessions).
  const connect = async (withinMs?: number) => {
    const opened: postgres.Sql[] = [];
    const open = (o: typeof options) => (opened.push(postgres(url, o)), opened.at(-1)!);
    const stop = () => opened.forEach((c) => void c.end({ timeout: 0 })); // fails the select in flight at once
    let timedOut: Error | undefined;
    const timer = withinMs !== undefined && withinMs < CONNECT_TIMEOUT_S * 1000
      ? setTimeout(() => {
        timedOut = Object.assign(new Error(`no connection within ${Math.round(withinMs)} ms, the wait's time left`), { code: "CONNECT_TIMEOUT" });
        stop();
      }, withinMs)
      : undefined;
    opts.signal?.addEventListener("abort", stop);
    try {
      const probe = open({ ...options, max: 1 });
      const [row] = await probe`select (select setting::int from pg_settings where name = 'idle_session_timeout') as idle_ms`;
      await probe.end({ timeout: 1 });
      const idle = idleSessions(row?.idle_ms as number | null);
      const client = open({ ...options, ...idle.pool, connection: { ...options.connection, ...idle.session } });
      await client`select 1`;
      return { client, idle };
    } catch (e) {
      await Promise.all(opened.map((c) => c.end({ timeout: 1 })));
      throw timedOut ?? e;
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", stop);
    }
  };
  const target = redactUrl(configured);
  const wait = { waitMs: opts.connectWaitMs ?? 0, setting: "persistence.datastore.postgres.connectWaitMs", log: opts.log, target, signal: opts.signal };
  const { client, idle } = await connectWithin(connect, wait).catch((e: Error) => {
    if (opts.signal?.aborted) throw e;
    throw new Error(`cannot connect to PostgreSQL at ${target}: ${e.message}${tlsRefusedHint(e)}`, { cause: e });
  });
  // A commit that wrote WAL, on a connection whose commits wait for their flush: the WAL is one
  // stream, so every commit before it is flushed too. (A transaction that only takes an xid,
  // `select txid_current()`, writes no WAL and commits without flushing.) A role may have been
  // denied the function: then the applies commit synchronously, each waiting for its flush.
  // It answers what names this run of PostgreSQL: its start time, and the time its statistics
  // were last discarded, which a start over after one of its processes crashed does
  // (restart_after_crash: the WAL buffers lost as in a restart, the start time kept). An
  // operator's pg_stat_reset_shared('bgwriter') changes it too, harmlessly (a stream starts over).
  const flush = () => client`select pg_logical_emit_message(true, 'tern', 'applies durable'), concat_ws(' ', pg_postmaster_start_time(), (select stats_reset from pg_stat_bgwriter)) as started`;
  const synchronousBecause = await flush().then(() => undefined, (e: Error) => `pg_logical_emit_message failed: ${e.message}`);
  // The applier's statements on connections of their own (opened at its first page): B applies
  // one page at a time, and its some 40 apply texts (a page's shape, per power of two) were
  // planned at their next call on each of the pool's connections after every ANALYZE, and
  // custom-planned at every call where PostgreSQL kept to custom plans. Here the last idle of two
  // connections serves each page, so a text is planned about once between analyzes, generic
  // (the texts are fixed OLTP statements on keys; no drizzle statement goes here).
  // Their commits are asynchronous, as PostgreSQL's own logical replication applies by default:
  // an apply does not wait for its WAL flush. Nothing is lost by it: an apply and its inbound
  // ack commit together, and the source hears of an apply (and may drop its task) only after
  // `durable`; a crash of PostgreSQL loses at most applies the source still holds, and this
  // side takes them again from its inbound acks.
  const applyClient = postgres(url, {
    ...options,
    ...idle.pool,
    max: 2,
    connection: {
      application_name: "tern-apply",
      ...sessionTimeouts(opts),
      ...idle.session,
      plan_cache_mode: "force_generic_plan",
      ...(!synchronousBecause && { synchronous_commit: "off" }),
    },
  });
  const db = drizzlePostgres(client, { schema }) as unknown as Db;
  return {
    db,
    kind: "postgres",
    pipelined: createPipelinedTransactions(client),
    applies: {
      db: drizzlePostgres(applyClient, { schema }) as unknown as Db,
      pipelined: createPipelinedTransactions(applyClient),
      durable: synchronousBecause ? () => Promise.resolve() : async () => (await flush())[0]!.started as unknown,
      synchronousBecause,
    },
    async withExclusiveLock(fn) {
      // A session advisory lock on a connection of its own excludes other processes; fn (the
      // migrations) runs on that session, waiting for the lock as long as the one before takes.
      const locker = postgres(url, { ...at, max: 1, onnotice: () => {}, connection: { application_name: "tern-migrate", ...idle.session } });
      try {
        // Set to none for this wait alone: the role's or database's lock_timeout or
        // statement_timeout, which the session takes, ended it with `canceling statement due
        // to lock timeout` while another server's migrations ran, and the start failed.
        await locker.begin((s) => [s`select set_config('lock_timeout', '0', true), set_config('statement_timeout', '0', true)`, s`select pg_advisory_lock(727376)`]);
        // The lock timeout as on every session of tern's: a migration's ALTER TABLE waiting for
        // its lock would queue every statement on the table behind it. No statement timeout: a
        // migration (an index built on a large table) takes what it takes.
        const { lock_timeout } = sessionTimeouts({ ...opts, statementTimeoutMs: 0 });
        if (lock_timeout) await locker`select set_config('lock_timeout', ${`${lock_timeout}ms`}, false)`;
        return await fn(drizzlePostgres(locker, { schema }) as unknown as Db);
      } finally {
        await locker.end({ timeout: 1 });
      }
    },
    async withSessionLock(key, fn, taken) {
      // Keepalives: if this host dies, PostgreSQL ends the session (and frees the lock) within
      // about 20 s, not the system's default 2 hours, for the other servers to take over.
      const connection = { application_name: "tern-lock", tcp_keepalives_idle: 10, tcp_keepalives_interval: 5, tcp_keepalives_count: 2, ...idle.session };
      const lost = new AbortController();
      const ended = (why: string) => !lost.signal.aborted && lost.abort(new Error(`the session holding the lock ${key} ended: ${why}`));
      const onclose = () => ended("PostgreSQL restarted, or ended the session");
      const holder = postgres(url, { ...at, max: 1, onnotice: () => {}, connection, onclose });
      try {
        const [row] = await holder`select pg_try_advisory_lock(hashtextextended(${key}, 0)) as held, pg_backend_pid() as pid`;
        if (!row?.held) throw taken();
        const check = async () => {
          lost.signal.throwIfAborted();
          // The pool opens a new session for a statement once the lock's is gone: its pid tells.
          const now = await holder`select pg_backend_pid() as pid`.then(([r]) => r?.pid, (e: Error) => `none (${e.message})`);
          if (now !== row.pid) ended(`its session (pid ${row.pid}) is gone; the lock's connection now reaches ${now}`);
          lost.signal.throwIfAborted();
        };
        return await fn({ lost: lost.signal, check });
      } finally {
        await holder.end({ timeout: 1 });
      }
    },
    close: async () => {
      await Promise.all([client.end({ timeout: 5 }), applyClient.end({ timeout: 5 })]);
    },
  };
}

/**
 * How tern's sessions meet the role's idle_session_timeout (idleMs; null where PostgreSQL, before
 * 14, has none): each sets it to 0 for itself, and the pools close a connection idle that long
 * themselves (postgres.js's idle_timeout). PostgreSQL closed them, and a statement sent as it
 * did met a reset connection (a request failed, UNAVAILABLE, now and then); the pool closes a
 * connection only while no statement is on it. The sessions that hold a lock (migrations', a
 * failover's) lost it with their session, a failover's in its wait for the target.
 */
function idleSessions(idleMs: number | null): { pool: { idle_timeout?: number }; session: Record<string, string> } {
  if (idleMs === null) return { pool: {}, session: {} };
  // "0", not 0: postgres.js leaves a startup parameter that is falsy out.
  return { pool: idleMs > 0 ? { idle_timeout: idleMs / 1000 } : {}, session: { idle_session_timeout: "0" } };
}

/** Seconds postgres.js waits before reconnecting after `retries` connections closed with an error (none once one connects). */
function reconnectDelaySeconds(retries: number): number {
  return Math.min(0.05 * retries, 1);
}
