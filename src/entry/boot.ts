/**
 * What every runtime entry shares: load config, create the server, bind listeners,
 * stop cleanly on SIGTERM/SIGINT. Entries only say how to serve `fetch` on HTTP/1.1.
 */
import { ConfigError, loadServerConfig } from "../config/load";
import { readEnv } from "../config/env";
import { hostPort } from "../host-port";
import { listenGrpc } from "../frontend/grpc-server";
import { createTernServer, type TernServer } from "../server";
import { bindListener, checkListenAddresses, listenAddressesOf } from "./listen-addresses";
import { findMigrationsFolder } from "./migrations-folder";
import { listenSharedPort } from "./shared-port";

/** A bound listener. */
export interface Listener {
  port: number;
  /** Stops accepting, lets open requests finish for up to graceMs, then cuts them. */
  close(graceMs: number): Promise<void>;
}

/** How an entry binds the runtime-specific parts. */
export interface EntryOptions {
  runtime: "bun" | "node" | "deno";
  /** The entry's import.meta.url: drizzle/ is found at or above it. */
  entryUrl: string;
  /** Serves tern.fetch (Connect, gRPC-web, JSON, /health, /metrics) on HTTP/1.1. */
  serveHttp(fetch: TernServer["fetch"], host: string, port: number): Promise<Listener>;
  /** How long open requests may run after a stop signal. */
  graceMs?: number;
}

/** Boots tern under opts.runtime and serves until SIGTERM/SIGINT; then exits the process. */
export async function runEntry(opts: EntryOptions): Promise<void> {
  // Listen for signals first: one during startup stops tern once it is up, never mid-migration;
  // but a wait for the database (--wait-for-database) ends at once, nothing being made yet.
  const stopping = new AbortController();
  const stopSignal = nextStopSignal().then((signal) => {
    stopping.abort(new Error(`stopped by ${signal} while waiting for the database`));
    return signal;
  });
  let tern: TernServer;
  let listeners: Listener[];
  try {
    ({ tern, listeners } = await boot(opts, stopping.signal));
  } catch (e) {
    if (stopping.signal.aborted && e === stopping.signal.reason) {
      console.error(`tern server ${(e as Error).message}; it did not start`);
      process.exit(0);
    }
    console.error(e instanceof ConfigError ? e.message : `tern server failed to start: ${(e as Error).message}`);
    process.exit(1);
  }
  const signal = await stopSignal;
  const drainMs = tern.config.services.frontend.shutdownDrainDuration;
  const graceMs = opts.graceMs ?? 5_000;
  tern.log.info("stopping", { signal, drainMs });
  // Background work waiting on a database that stopped answering (no statement timeout by
  // default) would hold the stop for good: past the limit the process exits as a crash would,
  // every write being atomic with what it moved (the next start takes it again).
  const limitMs = drainMs + graceMs + STOP_LIMIT_PAST_GRACE_MS;
  setTimeout(() => {
    tern.log.error("did not stop in time; exiting without closing the database", { signal, limitMs });
    process.exit(1);
  }, limitMs).unref?.();
  try {
    await stopListening(tern, listeners, drainMs, graceMs);
    await tern.close();
  } catch (e) {
    console.error(`tern server failed to stop cleanly: ${(e as Error).message}`);
    process.exit(1);
  }
  tern.log.info("stopped", { signal });
  process.exit(0);
}

/**
 * The listeners' part of a stop, so that no call sent meanwhile meets a reset connection: health
 * NOT_SERVING while calls are still served for drainMs (services.frontend.shutdownDrainDuration:
 * load balancers stop sending here), every HTTP/1.1 answer closing its connection; then new calls
 * refused UNAVAILABLE and the long polls answered, while the calls in flight finish (up to
 * graceMs); then the listeners close, with what is left of the grace for streams still open.
 */
async function stopListening(tern: TernServer, listeners: Listener[], drainMs: number, graceMs: number): Promise<void> {
  tern.stopGate.drain();
  if (drainMs > 0) {
    await new Promise((resolve) => setTimeout(resolve, drainMs));
    tern.log.info("drained; refusing new calls", { drainMs });
  }
  tern.stopGate.refuse();
  const t0 = performance.now();
  // Long polls answer now, so that neither wait below is held out on a peer's pull.
  await tern.endLongPolls();
  await tern.stopGate.settled(graceMs - (performance.now() - t0));
  const left = Math.max(0, graceMs - (performance.now() - t0));
  await Promise.allSettled(listeners.map((l) => l.close(left)));
}

async function boot({ runtime, entryUrl, serveHttp }: EntryOptions, stopping: AbortSignal): Promise<{ tern: TernServer; listeners: Listener[] }> {
  const env = readEnv();
  const config = loadServerConfig(process.argv.slice(2), env);
  const addresses = listenAddressesOf(config);
  // Before the database is opened: a start that cannot bind migrates nothing and pins no identity.
  await checkListenAddresses(addresses);
  const tern = await createTernServer(config, { migrationsFolder: findMigrationsFolder(entryUrl), database: { signal: stopping } });
  const listeners: Listener[] = [];
  try {
    const readMaxBytes = config.limits.blobSizeLimitError * 2 + 1024 * 1024;
    const { http: httpAt, grpc: grpcAt } = addresses;
    let http: Listener;
    let grpc: Listener;
    if (!grpcAt) {
      http = grpc = await bindListener(httpAt, () => listenSharedPort(tern, { host: httpAt.host, port: httpAt.port, readMaxBytes }));
      listeners.push(http);
    } else {
      listeners.push((http = await bindListener(httpAt, () => serveHttp(tern.fetch, httpAt.host, httpAt.port))));
      const { routes, interceptors, refuseUnserved } = tern;
      const listen = () => listenGrpc({ routes, interceptors, refuseUnserved, host: grpcAt.host, port: grpcAt.port, readMaxBytes });
      listeners.push((grpc = await bindListener(grpcAt, listen)));
    }
    tern.log.info("tern server started", {
      runtime,
      clusterId: tern.cluster.clusterId,
      address: hostPort(httpAt.host, http.port),
      httpPort: http.port,
      grpcPort: grpc.port,
      database: tern.database.kind,
      shards: tern.cluster.historyShardCount,
    });
    return { tern, listeners };
  } catch (e) {
    await Promise.allSettled(listeners.map((l) => l.close(0)));
    await tern.close();
    throw e;
  }
}

/** How long past the grace for open requests a stop may take before the process exits anyway. */
const STOP_LIMIT_PAST_GRACE_MS = 10_000;

/** Resolves with the first SIGTERM/SIGINT; a second one exits 1 at once. */
function nextStopSignal(): Promise<string> {
  return new Promise((resolve) => {
    let received = false;
    const handle = (signal: string) => {
      if (received) process.exit(1);
      received = true;
      resolve(signal);
    };
    process.on("SIGTERM", () => handle("SIGTERM"));
    process.on("SIGINT", () => handle("SIGINT"));
  });
}
