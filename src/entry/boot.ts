/**
 * What every runtime entry shares: load config, create the server, bind listeners,
 * stop cleanly on SIGTERM/SIGINT. Entries only say how to serve `fetch` on HTTP/1.1.
 */
import { ConfigError, loadConfig, resolveConfigPath } from "../config/load";
import { readEnv } from "../config/env";
import type { Config } from "../config/schema";
import { listenGrpc } from "../frontend/grpc-server";
import { createTernServer, type TernServer } from "../server";
import { findMigrationsFolder } from "./migrations-folder";

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
  /** Why native gRPC (node:http2 h2c) is unavailable on this runtime, if it is. */
  grpcUnavailable?: string;
  /** How long open requests may run after a stop signal. */
  graceMs?: number;
}

/** Boots tern under opts.runtime; exits the process on a startup failure or after a stop signal. */
export async function runEntry(opts: EntryOptions): Promise<void> {
  try {
    await boot(opts);
  } catch (e) {
    console.error(e instanceof ConfigError ? e.message : `tern server failed to start: ${(e as Error).message}`);
    process.exit(1);
  }
}

async function boot({ runtime, entryUrl, serveHttp, grpcUnavailable, graceMs = 5_000 }: EntryOptions): Promise<void> {
  const env = readEnv();
  const config = loadConfig(resolveConfigPath(process.argv.slice(2), env), env);
  const tern = await createTernServer(config, { migrationsFolder: findMigrationsFolder(entryUrl) });
  const listeners: Listener[] = [];
  const closeAll = async () => {
    // Listeners first so no request reaches a closed database; then the database (lock file).
    await Promise.allSettled(listeners.map((l) => l.close(graceMs)));
    await tern.close();
  };
  try {
    const rpc = config.services.frontend.rpc;
    const http = await serveHttp(tern.fetch, rpc.bindOnIP, rpc.port);
    listeners.push(http);
    let grpcPort: number | undefined;
    if (grpcUnavailable) {
      tern.log.warn("native gRPC listener skipped", { runtime, reason: grpcUnavailable });
    } else {
      const grpc = await listenGrpc({
        routes: tern.routes,
        interceptors: tern.interceptors,
        host: rpc.bindOnIP,
        port: grpcPortOf(config),
        readMaxBytes: config.limits.blobSizeLimitError * 2 + 1024 * 1024,
      });
      listeners.push(grpc);
      grpcPort = grpc.port;
    }
    tern.log.info("tern server started", {
      runtime,
      clusterId: tern.cluster.clusterId,
      address: `${rpc.bindOnIP}:${http.port}`,
      httpPort: http.port,
      grpcPort,
      database: tern.database.kind,
      shards: tern.cluster.historyShardCount,
    });
  } catch (e) {
    await closeAll();
    throw e;
  }
  onStopSignal(async (signal) => {
    tern.log.info("stopping", { signal });
    await closeAll();
    tern.log.info("stopped", { signal });
  });
}

/** grpcPort, else the HTTP port + 1; with HTTP on an ephemeral port, gRPC is ephemeral too. */
export function grpcPortOf(config: Config): number {
  const rpc = config.services.frontend.rpc;
  return rpc.grpcPort ?? (rpc.port === 0 ? 0 : rpc.port + 1);
}

/** Runs stop once on the first SIGTERM/SIGINT and exits 0; a second signal exits 1 at once. */
function onStopSignal(stop: (signal: string) => Promise<void>): void {
  let stopping = false;
  const handle = (signal: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    stop(signal).then(
      () => process.exit(0),
      (e) => {
        console.error(`tern server failed to stop cleanly: ${(e as Error).message}`);
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => handle("SIGTERM"));
  process.on("SIGINT", () => handle("SIGINT"));
}
