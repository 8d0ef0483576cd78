import { spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { DatastoreConfig } from "../../src/config/schema";
import { freePort } from "./free-port";
import { benchServerYaml } from "./server-config";

export interface ServerProcessOptions {
  /** The repository root (holds src/main.ts). */
  repoRoot: string;
  datastore: DatastoreConfig;
  /** A scratch directory for the config file. */
  workDir: string;
  /** The child's environment (the entry decides what it holds). */
  env: Record<string, string | undefined>;
  /** How long PGlite initdb or migrations may take. */
  startTimeoutMs?: number;
  /** Extra bun flags before the script, e.g. ["--cpu-prof", "--cpu-prof-dir=DIR"]. */
  runtimeArgs?: string[];
}

/** A tern server running in its own process. */
export interface ServerProcess {
  /** http://127.0.0.1:PORT, the Connect listener. */
  baseUrl: string;
  pid: number;
  /** The last few KB the server printed. */
  output(): string;
  /** SIGTERM, then SIGKILL if it has not exited within 10 s. */
  stop(): Promise<void>;
}

/** Spawns `bun src/main.ts --config <yaml>` on free ports and waits for GET /health = 200. */
export async function startServerProcess(opts: ServerProcessOptions): Promise<ServerProcess> {
  const [port, grpcPort] = [await freePort(), await freePort()];
  const configPath = join(opts.workDir, `tern-bench-${port}.yaml`);
  writeFileSync(configPath, benchServerYaml({ datastore: opts.datastore, port, grpcPort }));
  const child = spawn(process.execPath, [...(opts.runtimeArgs ?? []), "src/main.ts", "--config", configPath], {
    cwd: opts.repoRoot,
    env: opts.env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let tail = "";
  const keep = (chunk: Buffer) => void (tail = (tail + chunk.toString()).slice(-4000));
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  // How it ended, for messages: a runtime killed by a signal may print nothing.
  const exited = new Promise<string>((resolve) => child.once("exit", (code, signal) => resolve(signal ? `signal ${signal}` : `code ${code}`)));
  const baseUrl = `http://127.0.0.1:${port}`;
  const server: ServerProcess = { baseUrl, pid: child.pid!, output: () => tail, stop: () => stopChild(child, exited) };
  try {
    await waitHealthy(baseUrl, exited, opts.startTimeoutMs ?? 90_000);
    return server;
  } catch (e) {
    await server.stop();
    throw new Error(`tern server did not become healthy: ${(e as Error).message}\n--- server output ---\n${tail}`);
  }
}

async function waitHealthy(baseUrl: string, exited: Promise<string>, timeoutMs: number): Promise<void> {
  let ended: string | undefined;
  void exited.then((how) => (ended = how));
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (ended !== undefined) throw new Error(`server exited with ${ended}`);
    const ok = await fetch(`${baseUrl}/health`).then((r) => r.status === 200, () => false);
    if (ok) return;
    await Bun.sleep(100);
  }
  throw new Error(`no 200 from ${baseUrl}/health within ${timeoutMs} ms`);
}

async function stopChild(child: ChildProcess, exited: Promise<string>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}
