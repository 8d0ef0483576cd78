import { readFileSync } from "node:fs";
import postgres, { type Sql } from "postgres";
import { startClusterProcess, type ClusterProcess } from "../../scripts/lib/cluster-process";
import { startSettings } from "../../src/entry/start-settings";
import { installApplyStamps } from "./apply-stamps";
import { createTempDatabase, type TempDatabase } from "./pg-database";
import { clusterClients, type ClusterClients } from "./replication-workload";

/** One cluster of the bench: its process, clients and a direct connection to its database. */
export interface BenchCluster {
  name: string;
  proc: ClusterProcess;
  clients: ClusterClients;
  db: TempDatabase;
  sql: Sql;
}

/** Rate limits off, so the bench measures replication, not the limiter. */
const EXTRA_YAML = `limits:
  hostRps: { rps: 0, burst: 1 }
  namespaceRps: { rps: 0, burst: 1 }
`;

/**
 * TERN_BENCH_CPU_PROF=DIR: each server writes a CPU profile (markdown, Bun's --cpu-prof-md)
 * to DIR when it stops, for finding where a phase's time went. A profiled server does not
 * re-execute itself with its start settings (src/main.ts): they are set in its environment.
 */
const profileArgs = (name: string) => {
  const dir = process.env.TERN_BENCH_CPU_PROF;
  return dir ? ["--cpu-prof-md", `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${name}.md`] : undefined;
};
const profileEnv = () => (process.env.TERN_BENCH_CPU_PROF ? startSettings(process.env, navigator.hardwareConcurrency) : {});

/** Two clusters (A initial version 1, B initial 2, increment 100) on their own databases, connected both ways. */
export async function startClusterPair(o: {
  adminUrl: string;
  dir: string;
  shards: number;
  own: (c: () => Promise<unknown>) => void;
  /** Checkout whose servers run (see ClusterProcessOptions.root). */
  root?: string;
  /** Variables set in both servers' environment. */
  env?: Record<string, string>;
  /** Names of the databases: `<dbPrefix>_<random>` (default tern_bench). */
  dbPrefix?: string;
}): Promise<[BenchCluster, BenchCluster]> {
  const start = async (name: string, initialFailoverVersion: number): Promise<BenchCluster> => {
    const db = await createTempDatabase(o.adminUrl, o.dbPrefix);
    o.own(() => db.drop());
    const proc = await startClusterProcess({
      name, initialFailoverVersion, dir: o.dir, databaseUrl: db.url, shards: o.shards, logLevel: "info", extraYaml: EXTRA_YAML, startTimeoutMs: 60_000,
      runtimeArgs: profileArgs(name), root: o.root, env: { ...profileEnv(), ...o.env },
    });
    // A profiling server writes its profile on exit: give it time.
    o.own(() => proc.stop(process.env.TERN_BENCH_CPU_PROF ? 60_000 : 5_000));
    const sql = postgres(db.url, { max: 2, onnotice: () => {} });
    o.own(() => sql.end({ timeout: 2 }));
    return { name, proc, clients: clusterClients(proc.address), db, sql };
  };
  const [a, b] = await Promise.all([start("clusterA", 1), start("clusterB", 2)]);
  for (const [x, y] of [[a, b], [b, a]] as const) {
    let last = "";
    // Retried: right after boot a cluster has answered `unavailable` here now and then.
    await until(`${x.name} connects to ${y.name} (${last})`, () =>
      x.clients.operator.addOrUpdateRemoteCluster({ frontendAddress: y.proc.address }).then(() => true, (e) => ((last = (e as Error).message), false)),
    { timeoutMs: 30_000, intervalMs: 500 });
  }
  // Only on B: a trigger on A would slow the write path being measured.
  await installApplyStamps(b.sql);
  return [a, b];
}

/** Registers a global namespace on A with clusters [A, B] and waits until B has it. */
export async function registerGlobalNamespace(a: BenchCluster, b: BenchCluster, namespace: string): Promise<void> {
  await a.clients.workflow.registerNamespace({
    namespace, isGlobalNamespace: true, clusters: [a.name, b.name], activeClusterName: a.name, workflowExecutionRetentionPeriod: { seconds: 86_400n },
  });
  await until(`${b.name} has namespace ${namespace}`, async () => {
    const res = await b.clients.workflow.describeNamespace({ namespace }).catch(() => undefined);
    return res?.namespace !== undefined;
  });
}

/** Polls check every intervalMs until it is true; throws after timeoutMs. */
export async function until(what: string, check: () => Promise<boolean>, { timeoutMs = 60_000, intervalMs = 50 } = {}): Promise<number> {
  const t0 = performance.now();
  while (performance.now() - t0 < timeoutMs) {
    if (await check().catch(() => false)) return performance.now() - t0;
    await Bun.sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutMs / 1000}s waiting until ${what}`);
}

/** Peak and current resident set of a process, in MB, from /proc (undefined once it is gone). */
export function memoryOf(pid: number): { peakMb: number; rssMb: number } | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (field: string) => Number(/\s(\d+) kB/.exec(status.split("\n").find((l) => l.startsWith(field)) ?? "")?.[1] ?? Number.NaN);
    return { peakMb: kb("VmHWM:") / 1024, rssMb: kb("VmRSS:") / 1024 };
  } catch {
    return undefined;
  }
}

/** GET /metrics of a cluster. */
export async function scrape(c: BenchCluster): Promise<string> {
  const res = await fetch(`http://${c.proc.address}/metrics`);
  return res.text();
}

/** Number of history events in a cluster's database. */
export async function eventCount(c: BenchCluster): Promise<number> {
  const [row] = await c.sql<{ n: string }[]>`select count(*) as n from history_events`;
  return Number(row!.n);
}
