import { eq } from "drizzle-orm";
import { remoteFailureText, type RemoteClientPool, type RemoteClients } from "../src/cluster/remote-client";
import { loggableError } from "../src/errors";
import { createFlapLog } from "../src/observability/failure-log";
import type { Logger } from "../src/observability/log";
import type { Db } from "../src/persistence/database";
import { clusterMetadata } from "../src/persistence/schema";
import { sleep } from "../src/sleep";

/** A connected remote cluster as the replication streams see it. */
export interface RemoteCluster {
  name: string;
  address: string;
  shardCount: number;
  initialFailoverVersion: number;
  clients: RemoteClients;
}

/** What a stream tells the manager about its connection. */
export interface StreamReport {
  /** A round succeeded: the remote answered and what it sent is applied. */
  ok(): void;
  /** A round failed, or a task is retried past its budget (a busy database); the stream retries. */
  failed(error: unknown): void;
  /**
   * A round went through with nothing to ask the remote (no backfill to run): a failure reported
   * before (its database's) is over, and the stream counts neither way in the remote's state.
   */
  idle(): void;
}

/**
 * One replication loop towards a remote (e.g. history shard 3, or namespaces). run()
 * loops until signal aborts; if it throws, the manager restarts it after a backoff.
 */
export interface ReplicationStream {
  name: string;
  run(remote: RemoteCluster, signal: AbortSignal, report: StreamReport): Promise<void>;
}

export interface ReplicationManagerDeps {
  db: Db;
  clients: RemoteClientPool;
  /** The streams to run for one enabled remote. */
  streamsFor: (remote: RemoteCluster) => ReplicationStream[];
  log: Logger;
  /**
   * A remote's streams stopped for good (disabled, or removed: `removed`), or a disabled one was
   * removed: what is shown of its inbound side (metrics) is no longer current.
   */
  onStopped?: (name: string, removed: boolean) => void;
}

interface Running {
  key: string;
  abort: AbortController;
  done: Promise<unknown>;
  /** Each stream's state by its name: "connecting" until it reports, then "connected", "idle" (nothing to ask) or "error: ...". */
  states: Map<string, string>;
}

/**
 * Runs the replication streams of every enabled remote cluster and restarts them when
 * remote clusters change: refresh() is called by every change, so nothing waits for a
 * periodic reload.
 */
export function createReplicationManager({ db, clients, streamsFor, log, onStopped }: ReplicationManagerDeps) {
  const running = new Map<string, Running>();
  const disabled = new Set<string>();
  /** The remotes of the last reload, to tell one removed since. */
  let known = new Set<string>();
  let stopped = false;
  const stopping = new AbortController();
  let refreshing: Promise<void> = Promise.resolve();

  function startRemote(row: typeof clusterMetadata.$inferSelect): Running {
    const remote: RemoteCluster = {
      name: row.clusterName,
      address: row.rpcAddress,
      shardCount: row.historyShardCount,
      initialFailoverVersion: row.initialFailoverVersion,
      clients: clients.get(row.rpcAddress),
    };
    const abort = new AbortController();
    const streams = streamsFor(remote);
    const entry: Running = { key: keyOf(row), abort, done: Promise.resolve(), states: new Map(streams.map((s) => [s.name, "connecting"])) };
    entry.done = Promise.all(streams.map((s) => loop(s, remote, abort.signal, entry)));
    log.info("replication started", { remote: remote.name, address: remote.address });
    return entry;
  }

  /** Runs stream until signal aborts, restarting it after a failure; each failure is logged once, and the recovery. */
  async function loop(stream: ReplicationStream, remote: RemoteCluster, signal: AbortSignal, entry: Running) {
    // A link that fails and recovers every second is said once per 10 s, not twice a second.
    const failures = createFlapLog();
    let backoff = 100;
    const wentThrough = (state: string) => {
      // A stream ends by throwing, however long it was well: the next failure is retried soon again.
      backoff = 100;
      entry.states.set(stream.name, state);
      const failedForMs = failures.recovered();
      if (failedForMs !== undefined) log.info("replication stream recovered", { remote: remote.name, stream: stream.name, failedForMs: Math.round(failedForMs) });
    };
    const report: StreamReport = {
      ok: () => wentThrough("connected"),
      idle: () => wentThrough("idle"),
      failed: (e) => {
        const msg = remoteFailureText(remote.name, e);
        const write = failures.failed(msg);
        if (write) log.warn("replication stream failed", { remote: remote.name, stream: stream.name, error: msg, ...(write.repeated && { repeated: write.repeated }) });
        entry.states.set(stream.name, `error: ${msg}`);
      },
    };
    while (!signal.aborted) {
      try {
        await stream.run(remote, signal, report);
        backoff = 100;
      } catch (e) {
        if (signal.aborted) break;
        report.failed(e);
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, 1000); // short: a peer that just connected us back should be seen promptly
      }
    }
  }

  async function reload(): Promise<void> {
    if (stopped) return;
    const rows = await db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, false));
    const wanted = new Map(rows.filter((r) => r.enableConnection).map((r) => [r.clusterName, r]));
    const present = new Set(rows.map((r) => r.clusterName));
    disabled.clear();
    for (const r of rows) if (!r.enableConnection) disabled.add(r.clusterName);
    for (const [name, entry] of running) {
      const row = wanted.get(name);
      if (row && keyOf(row) === entry.key) continue;
      entry.abort.abort();
      running.delete(name);
      await entry.done;
      log.info("replication stopped", { remote: name });
      if (!row && present.has(name)) onStopped?.(name, false);
    }
    for (const name of known) if (!present.has(name)) onStopped?.(name, true);
    known = present;
    for (const [name, row] of wanted) if (!running.has(name)) running.set(name, startRemote(row));
  }

  /**
   * reload() at start, again after a failure until it goes through or the manager stops. The
   * server starts it without waiting: a read that failed there (the database out of connection
   * slots, or gone a moment) was a rejection nobody handled, and no stream started until an
   * operator changed a remote.
   */
  async function firstLoad(): Promise<void> {
    for (let backoff = 100; !stopped; backoff = Math.min(backoff * 2, 2000)) {
      try {
        return await reload();
      } catch (e) {
        if (stopped) return;
        log.warn("reading the remote clusters failed; replication starts once a read goes through", { error: loggableError(e), retryInMs: backoff });
        await sleep(backoff, stopping.signal);
      }
    }
  }

  return {
    /** Starts streams for the enabled remotes, once they can be read. */
    start: () => (refreshing = refreshing.then(firstLoad)),
    /** Re-reads remote clusters now and starts or stops streams to match. */
    refresh(): Promise<void> {
      refreshing = refreshing.then(reload, reload);
      return refreshing;
    },
    /**
     * "connected", "connecting", "disabled", "error: ..." or "unknown": a remote is in error while
     * any of its streams is (the first failing one's error), connected once one reported a
     * success and none fails. A stream that succeeds (namespaces' long poll) does not hide
     * another that fails (history).
     */
    connectionState(name: string): string {
      if (disabled.has(name)) return "disabled";
      const states = running.get(name)?.states;
      if (!states) return "unknown";
      let connected = false;
      for (const state of states.values()) {
        if (state.startsWith("error: ")) return state;
        connected ||= state === "connected";
      }
      return connected ? "connected" : "connecting";
    },
    /** The remotes known at the last reload, enabled or not. */
    remotes: (): string[] => [...known],
    async stop(): Promise<void> {
      stopped = true;
      stopping.abort();
      await refreshing.catch(() => {});
      const all = [...running.values()];
      running.clear();
      for (const r of all) r.abort.abort();
      await Promise.all(all.map((r) => r.done));
    },
  };
}

export type ReplicationManager = ReturnType<typeof createReplicationManager>;

/**
 * The states replication_connection_state shows. `unknown`: a remote known here whose streams are
 * not running for a moment (restarted after a change of its address, or being removed).
 */
export const CONNECTION_STATES = ["connected", "connecting", "error", "disabled", "unknown"];

/**
 * replication_connection_state's series: each remote's state as replication status shows it, one per
 * state, exactly one of them 1. A state outside CONNECTION_STATES is `unknown`: while a remote's
 * streams restarted, its series were all 0, and a scraper saw no state at all.
 */
export function connectionStateSeries(manager: Pick<ReplicationManager, "remotes" | "connectionState">): { labels: Record<string, string>; value: number }[] {
  return manager.remotes().flatMap((remote) => {
    const state = manager.connectionState(remote).replace(/^error: .*/s, "error");
    const now = CONNECTION_STATES.includes(state) ? state : "unknown";
    return CONNECTION_STATES.map((s) => ({ labels: { remote_cluster: remote, state: s }, value: s === now ? 1 : 0 }));
  });
}

const keyOf = (r: typeof clusterMetadata.$inferSelect) => `${r.rpcAddress}|${r.historyShardCount}|${r.clusterId}`;
