/**
 * A tern server in a child process (any runtime), on ephemeral ports over a fresh
 * PGlite dir or a given PostgreSQL database. Ports come from the "tern server started" log line, so no port is
 * guessed and none can be taken in between.
 */
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { eventually } from "../support/eventually";
import { newDataLocation, testConfigYaml } from "../support/server";
import { processStartWait } from "../support/timeouts";

export const repoRoot = fileURLToPath(new URL("../..", import.meta.url));

/**
 * The deno binary from the npm package (or one on PATH), if any. The real binary, not
 * the node wrapper (bin.cjs, used when install scripts did not run): the wrapper would
 * not pass SIGTERM on.
 */
function findDeno(): string | undefined {
  const paths = ["node_modules/deno/deno", `node_modules/@deno/${process.platform}-${process.arch}-glibc/deno`];
  const local = paths.map((p) => join(repoRoot, p)).find((p) => existsSync(p));
  const candidate = local ?? "deno";
  return spawnSync(candidate, ["--version"]).status === 0 ? candidate : undefined;
}

/** `node --version`, or undefined where there is no node. */
export const nodeVersion = spawnSync("node", ["--version"], { encoding: "utf8" }).stdout?.trim() || undefined;

/**
 * The commands of the three entries: Bun's from source, Node's and Deno's from the bundles
 * scripts/build-runtimes.ts writes (buildRuntimes first); present where the runtime runs here.
 */
export function serverEntries(): { name: string; cmd: string[]; present: boolean }[] {
  const deno = findDeno();
  return [
    { name: "bun", cmd: [process.execPath, "src/main.ts"], present: true },
    { name: `node ${nodeVersion ?? "(absent)"}`, cmd: ["node", "dist/node/tern.mjs"], present: !!nodeVersion },
    { name: "deno", cmd: [deno ?? "deno", "run", "-A", "dist/deno/tern.mjs"], present: !!deno },
  ];
}

/** A running server process. */
export interface ServerProcess {
  /** Base URL of the HTTP/1.1 listener (Connect, gRPC-web, JSON, /health). */
  httpUrl: string;
  /** Base URL of the native gRPC (h2c) listener, when the entry has one. */
  grpcUrl?: string;
  dataDir: string;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  /** Sends signal, waits for exit; resolves to the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Stops (SIGKILL if it must) and removes the data dir. */
  destroy(): Promise<void>;
}

/** How startServerProcess starts its server. */
export interface ServerProcessOptions {
  /** How long to wait for the started line and /health 200. */
  timeout?: number;
  /** grpcPort equal to port, so HTTP/1.1 and gRPC share one listener. */
  sharedPort?: boolean;
  /** A PostgreSQL database to use, in place of a fresh PGlite dir (left as it is at destroy). */
  databaseUrl?: string;
  /** Arguments after `--config PATH`. */
  args?: string[];
  /** Variables over the test's environment. */
  env?: Record<string, string>;
  /** YAML added to the config (top-level keys), as startTestCluster's extraYaml. */
  extraYaml?: string;
}

/** Starts `cmd --config <temp config>` and waits for its started line and GET /health 200. */
export async function startServerProcess(cmd: string[], opts: ServerProcessOptions = {}): Promise<ServerProcess> {
  return (await spawnServerProcess(cmd, opts)).ready;
}

/** A server process as it starts: what it wrote so far, its exit, and the server once it serves. */
export interface StartingServerProcess {
  output(): string;
  /** Resolves to the exit code when the process ends. */
  exited: Promise<number>;
  /** Sends the process signal (a stop while it starts). */
  kill(signal: NodeJS.Signals): void;
  /** The server once it serves; rejects (the process stopped, the data removed) if it did not start within the timeout. */
  ready: Promise<ServerProcess>;
}

/** Spawns `cmd --config <temp config>` without waiting for it (see startServerProcess). */
export async function spawnServerProcess(
  cmd: string[],
  { timeout = processStartWait, sharedPort = false, databaseUrl, args = [], env = {}, extraYaml }: ServerProcessOptions = {},
): Promise<StartingServerProcess> {
  const data = await newDataLocation("pglite");
  const configPath = join(data.location, "tern.yaml");
  writeFileSync(configPath, configYaml(databaseUrl ?? join(data.location, "db"), sharedPort, databaseUrl ? "postgres" : "pglite", extraYaml));
  const child = Bun.spawn([...cmd, "--config", configPath, ...args], {
    cwd: repoRoot,
    env: { ...process.env, TERN_LOG_LEVEL: "info", NO_COLOR: "1", ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  let text = "";
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    for (let r = await reader.read(); !r.done; r = await reader.read()) text += decoder.decode(r.value, { stream: true });
  };
  void collect(child.stdout);
  void collect(child.stderr);
  const kill = async (signal: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    return child.exited;
  };
  const proc = {
    dataDir: join(data.location, "db"),
    output: () => text,
    stop: (signal: NodeJS.Signals = "SIGTERM") => kill(signal),
    async destroy() {
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await kill("SIGTERM");
      clearTimeout(timer);
      await data.remove();
    },
  };
  const ready = async () => {
    try {
      const started = await eventually(
        () => {
          if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
          const line = text.split("\n").find((l) => l.includes(`"msg":"tern server started"`));
          if (!line) throw new Error("no started line yet");
          return JSON.parse(line) as { httpPort: number; grpcPort?: number };
        },
        { timeout, interval: 50 },
      );
      const httpUrl = `http://127.0.0.1:${started.httpPort}`;
      await eventually(async () => {
        const res = await fetch(`${httpUrl}/health`);
        if (res.status !== 200) throw new Error(`/health ${res.status}`);
      });
      const grpcUrl = started.grpcPort ? `http://127.0.0.1:${started.grpcPort}` : undefined;
      return { ...proc, httpUrl, grpcUrl };
    } catch (e) {
      const out = text;
      await proc.destroy();
      throw new Error(`${cmd.join(" ")} did not start: ${(e as Error).message}\n--- output ---\n${out}`);
    }
  };
  const serving = ready();
  serving.catch(() => {}); // awaited by the caller, maybe after the process exited
  return { output: proc.output, exited: child.exited, kill: (signal) => child.kill(signal), ready: serving };
}

/**
 * Runs `bun src/main.ts ARGS` to its exit, for a start that must fail: the test's TERN_
 * variables left out, env's put in. A server that starts would serve on: it is killed after 30 s.
 */
export async function runServerToExit(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; output: string }> {
  const inherited: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("TERN_")) inherited[k] = v;
  const child = Bun.spawn([process.execPath, "src/main.ts", ...args], {
    cwd: repoRoot,
    env: { ...inherited, NO_COLOR: "1", ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  clearTimeout(timer);
  return { code, output: stdout + stderr };
}

/** True when the PGlite data dir lock was released. */
export function lockReleased(dataDir: string): boolean {
  return !existsSync(join(dataDir, "tern.lock"));
}

function configYaml(dataLocation: string, sharedPort: boolean, store: "pglite" | "postgres", extraYaml?: string): string {
  const yaml = testConfigYaml({ store, dataLocation, extraYaml });
  if (!sharedPort) return yaml;
  const rpc = "rpc: { bindOnIP: 127.0.0.1, port: 0 }";
  if (!yaml.includes(rpc)) throw new Error("testConfigYaml changed: update configYaml in server-process.ts");
  return yaml.replace(rpc, "rpc: { bindOnIP: 127.0.0.1, port: 0, grpcPort: 0 }");
}
