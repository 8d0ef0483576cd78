/**
 * A/B of the replication path on a noisy machine: the steady phase of bench:replication
 * (paced load on A, per-event lag to B, CPU per event) run alternately on the servers of a
 * base revision (a git worktree) and of this checkout, in ABBA order, with the same bench
 * code driving both. Prints every run, each side's medians and head/base ratios, and
 * writes bench/results/compare-latest.json. `bun run bench:compare --base REV`.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { repoRoot } from "../scripts/lib/cluster-process";
import { argsOrExit, clusterPostgres, createCleanups } from "./lib/bench-process";
import { parseCompareArgs, runOrder } from "./lib/compare-args";
import { median } from "./lib/percentiles";
import { registerGlobalNamespace, startClusterPair } from "./lib/replication-clusters";
import { steadyPhase } from "./lib/replication-phases";
import { writeJsonReport } from "./lib/report";

const args = argsOrExit(parseCompareArgs);
const { own, cleanUp } = createCleanups();
// --own-postgres: one private instance for every run (stopped last), so lag is measured from A's commit.
const adminUrl = await clusterPostgres(args.ownPostgres, own);
const git = (...a: string[]) => execFileSync("git", a, { cwd: repoRoot, encoding: "utf8" }).trim();

/** One measured run of one side. */
interface Run {
  side: "base" | "head";
  /** Writes A acknowledged per second: at a rate A cannot hold, the lag of a faster side is measured under more load. */
  opsPerSec: number;
  p50: number;
  p95: number;
  p99: number;
  /** Server + PostgreSQL CPU ms per event, both clusters. */
  cpuMsPerEvent: number;
  aServerCpuMs: number;
  /** A's PostgreSQL backends: where the sender's page reads cost. */
  aPgCpuMs: number;
  bServerCpuMs: number;
  bPgCpuMs: number;
  /** Of the servers' CPU: each one's main thread (where JavaScript runs), and both servers' JIT compiler threads. */
  aMainCpuMs: number;
  bMainCpuMs: number;
  jitCpuMs: number;
  /** A's pages sent from its outbox tail and read from the database (0 and 0 on revisions that do not count them). */
  pagesSent: { memory: number; database: number };
  /** B's tasks per applied page: its fixed costs are per page. */
  bTasksPerPage: number;
}

try {
  const baseRev = git("rev-parse", "--verify", `${args.base}^{commit}`);
  const headRev = git("rev-parse", "HEAD");
  const dirty = git("status", "--porcelain", "--untracked-files=no") !== "";
  const dir = mkdtempSync(join(tmpdir(), "tern-bench-compare-"));
  own(async () => rmSync(dir, { recursive: true, force: true }));
  const baseRoot = join(dir, "base");
  git("worktree", "add", "--detach", baseRoot, baseRev);
  own(async () => git("worktree", "remove", "--force", baseRoot));
  // Same dependencies: the base runs on this checkout's node_modules (a changed lock file is reported).
  symlinkSync(join(repoRoot, "node_modules"), join(baseRoot, "node_modules"));
  const lockChanged = git("diff", "--name-only", baseRev, "--", "package-lock.json") !== "";
  // The mends are applied to node_modules, so the base runs with this checkout's (mend 8 changes the pool's order).
  const mendsChanged = git("diff", "--name-only", baseRev, "--", "scripts/dependency-mends.json") !== "";
  console.log(`compare: base ${args.base} (${baseRev.slice(0, 10)}) against this checkout (${headRev.slice(0, 10)}${dirty ? ", with uncommitted changes" : ""})`);
  if (lockChanged) console.log("  note: package-lock.json differs; the base runs on this checkout's node_modules");
  if (mendsChanged) console.log("  note: scripts/dependency-mends.json differs; the base runs with this checkout's mended postgres.js");
  const headEnv = Object.entries(args.headEnv).map(([k, v]) => `${k}=${v}`).join(" ");
  if (headEnv) console.log(`  head's servers run with ${headEnv}`);
  console.log(`  ${args.pairs} runs each, ABBA order; steady ${args.rate} ops/s, ${args.clients} clients, ${args.durationS}s after ${args.warmupS}s warm-up, ${args.shards} shards; lag from ${args.ownPostgres ? "A's commit (private PostgreSQL)" : "the event time on A"}\n`);

  // The current run's servers and databases: stopped after the run, or first on Ctrl-C.
  const current: (() => Promise<unknown>)[] = [];
  const cleanRun = async () => {
    for (const c of current.splice(0).reverse()) await c().catch((e) => console.error(`clean-up: ${(e as Error).message}`));
  };
  own(cleanRun);

  const runs: Run[] = [];
  for (const [i, side] of runOrder(args.pairs).entries()) {
    try {
      const root = side === "base" ? baseRoot : repoRoot;
      const runDir = mkdtempSync(join(dir, `run-${i + 1}-`));
      const env = side === "head" ? args.headEnv : undefined;
      const [a, b] = await startClusterPair({ adminUrl, dir: runDir, shards: args.shards, own: (c) => void current.push(c), root, env });
      await registerGlobalNamespace(a, b, "bench-global");
      const { flow } = await steadyPhase({ a, b, namespace: "bench-global", log: () => {} }, {
        rate: args.rate, clients: args.clients, durationMs: args.durationS * 1000, warmupMs: args.warmupS * 1000,
      });
      const lag = flow.commitLagMs ?? flow.stampLagMs;
      const cpu = Object.values(flow.cpuMsPerEvent).reduce((s, c) => s + c.tern + c.pg, 0);
      const [ca, cb] = [flow.cpuMsPerEvent[a.name]!, flow.cpuMsPerEvent[b.name]!];
      const run: Run = {
        side, opsPerSec: flow.opsPerSec, p50: lag.p50, p95: lag.p95, p99: lag.p99, cpuMsPerEvent: cpu,
        aServerCpuMs: ca.tern, aPgCpuMs: ca.pg, bServerCpuMs: cb.tern, bPgCpuMs: cb.pg, pagesSent: flow.aPagesSent, bTasksPerPage: flow.bPages.tasksPerPage,
        aMainCpuMs: ca.threads.main ?? Number.NaN, bMainCpuMs: cb.threads.main ?? Number.NaN, jitCpuMs: (ca.threads.jit ?? 0) + (cb.threads.jit ?? 0),
      };
      runs.push(run);
      console.log(
        `run ${i + 1} ${side.padEnd(4)}  ${run.opsPerSec.toFixed(0)} ops/s  lag p50 ${run.p50.toFixed(1)} p95 ${run.p95.toFixed(1)} p99 ${run.p99.toFixed(1)} ms` +
          `  CPU/event ${cpu.toFixed(2)} ms (A server ${run.aServerCpuMs.toFixed(2)}, A pg ${run.aPgCpuMs.toFixed(2)}, B server ${run.bServerCpuMs.toFixed(2)}, B pg ${run.bPgCpuMs.toFixed(2)}; main threads A ${run.aMainCpuMs.toFixed(2)}, B ${run.bMainCpuMs.toFixed(2)}, JIT ${run.jitCpuMs.toFixed(2)})` +
          `  pages sent ${run.pagesSent.memory} from memory, ${run.pagesSent.database} read; B ${run.bTasksPerPage.toFixed(2)} tasks/page` +
          (flow.errors ? `  ${flow.errors} errors: ${flow.firstError}` : ""),
      );
    } finally {
      await cleanRun();
    }
  }

  const keys = ["opsPerSec", "p50", "p95", "p99", "cpuMsPerEvent", "aServerCpuMs", "aPgCpuMs", "bServerCpuMs", "bPgCpuMs", "aMainCpuMs", "bMainCpuMs", "jitCpuMs"] as const;
  const sideOf = (side: Run["side"]) => Object.fromEntries(keys.map((k) => [k, median(runs.filter((r) => r.side === side).map((r) => r[k]))])) as Record<(typeof keys)[number], number>;
  const base = sideOf("base");
  const head = sideOf("head");
  // Runs k of each side, in run order: head lower than base in how many of them.
  const bases = runs.filter((r) => r.side === "base");
  const heads = runs.filter((r) => r.side === "head");
  const lowerIn = (k: (typeof keys)[number]) => heads.filter((h, i) => h[k] < bases[i]![k]).length;
  console.log(`\n${"figure (median)".padEnd(28)}${"base".padStart(10)}${"head".padStart(10)}${"head/base".padStart(11)}  head lower in`);
  for (const k of keys) {
    const label = { opsPerSec: "A acked ops/s", p50: "lag p50 ms", p95: "lag p95 ms", p99: "lag p99 ms", cpuMsPerEvent: "CPU ms/event (all)", aServerCpuMs: "A server CPU ms/event", aPgCpuMs: "A PostgreSQL CPU ms/event", bServerCpuMs: "B server CPU ms/event", bPgCpuMs: "B PostgreSQL CPU ms/event", aMainCpuMs: "  A main thread", bMainCpuMs: "  B main thread", jitCpuMs: "  A and B JIT threads" }[k];
    console.log(`${label.padEnd(28)}${base[k].toFixed(2).padStart(10)}${head[k].toFixed(2).padStart(10)}${(head[k] / base[k]).toFixed(2).padStart(10)}x  ${lowerIn(k)} of ${args.pairs}`);
  }
  const path = join(repoRoot, "bench/results/compare-latest.json");
  writeJsonReport(path, { startedAt: new Date().toISOString(), args, baseRev, headRev, dirty, runs, medians: { base, head } });
  console.log(`\nwrote ${path}`);
} finally {
  await cleanUp();
}
