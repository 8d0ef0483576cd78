/**
 * Idle cost: two connected tern clusters on PostgreSQL with a global namespace and one
 * replicated run, then nothing written for a window: the transactions each cluster's
 * database commits (pg_stat_database, read from the admin database so the reads do not
 * count) and the CPU of each server and its PostgreSQL backends. `bun bench/idle.ts
 * [--runs N] [--seconds S] [--shards N] [--roots DIR,DIR]` (roots: checkouts whose servers
 * run, alternated run by run, for A/B figures; default this one).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { benchPostgresOrExit, createCleanups } from "./lib/bench-process";
import { processCpuMs } from "./lib/cpu-usage";
import { registerGlobalNamespace, startClusterPair, until, type BenchCluster } from "./lib/replication-clusters";

const flag = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : fallback;
};
const runs = Number(flag("runs", "3"));
const seconds = Number(flag("seconds", "60"));
const shards = Number(flag("shards", "16"));
const settleSeconds = Number(flag("settle", "15"));
const roots = flag("roots", "").split(",").filter(Boolean);
const dbPrefix = flag("db-prefix", "tern_bench");

const adminUrl = await benchPostgresOrExit();
const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });

/** Commits and rollbacks so far of a database, and the CPU ms of its server and backends. */
async function sample(c: BenchCluster): Promise<{ xacts: number; tern: number; pg: Map<number, number> }> {
  const [row] = await admin<{ n: string }[]>`select xact_commit + xact_rollback as n from pg_stat_database where datname = ${c.db.name}`;
  const pids = await admin<{ pid: number }[]>`select pid from pg_stat_activity where datname = ${c.db.name}`;
  return { xacts: Number(row!.n), tern: processCpuMs(c.proc.pid), pg: new Map(pids.map((p) => [p.pid, processCpuMs(p.pid)])) };
}

async function oneRun(root: string | undefined, run: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), `${dbPrefix}-idle-`));
  const { own, cleanUp } = createCleanups();
  own(async () => rmSync(dir, { recursive: true, force: true }));
  try {
    const [a, b] = await startClusterPair({ adminUrl, dir, shards, own, root, dbPrefix });
    await registerGlobalNamespace(a, b, "idle");
    await a.clients.workflow.startWorkflowExecution({ namespace: "idle", workflowId: "w1", workflowType: "Idle", taskQueue: "idle", requestId: crypto.randomUUID() });
    await until("B has w1", async () => (await b.clients.workflow.describeWorkflowExecution({ namespace: "idle", execution: { workflowId: "w1" } }).catch(() => undefined)) !== undefined);
    // Past the first passes of the periodic work, and the statistics of the set-up flushed.
    await Bun.sleep(settleSeconds * 1000);
    const before = await Promise.all([sample(a), sample(b)]);
    const t0 = performance.now();
    await Bun.sleep(seconds * 1000);
    const after = await Promise.all([sample(a), sample(b)]);
    const s = (performance.now() - t0) / 1000;
    const parts = [a, b].map((c, i) => {
      const [x, y] = [before[i]!, after[i]!];
      const pg = [...y.pg].reduce((sum, [pid, ms]) => sum + ms - (x.pg.get(pid) ?? 0), 0);
      return { name: c.name, tps: (y.xacts - x.xacts) / s, tern: ((y.tern - x.tern) / s) * 60 / 1000, pg: (pg / s) * 60 / 1000 };
    });
    const tps = parts.reduce((n, p) => n + p.tps, 0);
    const cpu = parts.reduce((n, p) => n + p.tern + p.pg, 0);
    console.log(
      `run ${run} ${root ?? "."}: pair ${tps.toFixed(2)} transactions/s, ${cpu.toFixed(2)} CPU s/min (` +
        parts.map((p) => `${p.name} ${p.tps.toFixed(2)}/s, tern ${p.tern.toFixed(2)} + pg ${p.pg.toFixed(2)} s/min`).join("; ") +
        `) load ${loadavg()[0]!.toFixed(2)}`,
    );
  } finally {
    await cleanUp();
  }
}

try {
  const order = roots.length ? roots : [undefined];
  for (let run = 1; run <= runs; run++) for (const root of order) await oneRun(root, run);
} finally {
  await admin.end({ timeout: 2 });
}
