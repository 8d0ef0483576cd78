/**
 * Bun entry point: `bun run server [--config PATH]`. The only module that calls Bun
 * APIs; the core (createTernServer) is web-standard and runs on Node and Deno too.
 */
import { fileURLToPath } from "node:url";
import { ConfigError, loadConfig, resolveConfigPath } from "./config/load";
import { readEnv } from "./config/env";
import { listenGrpc } from "./frontend/grpc-server";
import { createTernServer } from "./server";

async function main(): Promise<void> {
  const env = readEnv();
  const config = loadConfig(resolveConfigPath(process.argv.slice(2), env), env);
  const migrationsFolder = fileURLToPath(new URL("../drizzle", import.meta.url));
  const tern = await createTernServer(config, { migrationsFolder });
  const rpc = config.services.frontend.rpc;
  const http = Bun.serve({ hostname: rpc.bindOnIP, port: rpc.port, fetch: tern.fetch, idleTimeout: 0 });
  const grpc = await listenGrpc({
    routes: tern.routes,
    interceptors: tern.interceptors,
    host: rpc.bindOnIP,
    port: rpc.grpcPort ?? rpc.port + 1,
    readMaxBytes: config.limits.blobSizeLimitError * 2 + 1024 * 1024,
  });
  tern.log.info("tern server started", {
    clusterId: tern.cluster.clusterId,
    address: `${rpc.bindOnIP}:${http.port}`,
    grpcPort: grpc.port,
    database: tern.database.kind,
    shards: tern.cluster.historyShardCount,
  });
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    tern.log.info("stopping", { signal });
    await http.stop(true);
    await grpc.close();
    await tern.close();
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
}

main().catch((e) => {
  const message = e instanceof ConfigError ? e.message : `tern server failed to start: ${(e as Error).message}`;
  console.error(message);
  process.exit(1);
});
