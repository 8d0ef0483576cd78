/**
 * Single-cluster throughput and latency of StartWorkflowExecution and
 * SignalWorkflowExecution against a tern server in its own process, on PGlite and
 * PostgreSQL, next to a raw single-row INSERT baseline on the same PostgreSQL.
 *
 *   bun bench/single-cluster.ts [--duration 5] [--store pglite|postgres|both] [--clients 1,8,32]
 *
 * The only bench module that reads the environment: TERN_BENCH_PG_URL (an admin URL;
 * default postgres://postgres@127.0.0.1:5432/postgres).
 */
import { availableParallelism, cpus, loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { parseArgs } from "./lib/args";
import { evaluateGoal, GOAL } from "./lib/goal";
import { unreachableReason } from "./lib/pg-database";
import { formatTable, withRatios, writeJsonReport, type ResultRow } from "./lib/report";
import { runPgliteStore, runPostgresStore, type StoreRunOptions } from "./lib/store-runs";

const RESULTS_PATH = fileURLToPath(new URL("./results/single-cluster-latest.json", import.meta.url));
const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const adminUrl = process.env.TERN_BENCH_PG_URL || "postgres://postgres@127.0.0.1:5432/postgres";
  // The server reads TERN_* itself; none of the caller's may redirect it.
  const serverEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TERN_")));
  const durationMs = args.durationS * 1000;
  const warmupMs = Math.min(1000, durationMs / 2);
  const cores = availableParallelism();
  const machine = `${cores} cores (${cpus()[0]?.model.trim() ?? "unknown cpu"}), bun ${Bun.version}`;
  const note = `bench client, tern server and database share this machine's ${cores} cores: figures are lower bounds, not capacity`;
  console.log(`tern single-cluster bench: ${machine}`);
  console.log(`NOTE: ${note}`);
  const loadBefore = loadavg()[0]!;
  if (loadBefore > 0.5) console.warn(`WARNING: 1-minute load average is ${loadBefore.toFixed(2)} before the bench: other processes compete for the CPU`);
  console.log(`phases: ${args.durationS} s measured after ${warmupMs / 1000} s warm-up; clients ${args.clients.join(",")}; store ${args.store}\n`);

  let pgSkipped: string | undefined;
  if (args.store !== "pglite") {
    pgSkipped = await unreachableReason(adminUrl);
    if (pgSkipped) {
      console.error(`\n${"!".repeat(78)}\n!!! PostgreSQL UNREACHABLE (${pgSkipped})\n!!! PostgreSQL phases and the baseline are SKIPPED; running PGlite only.\n${"!".repeat(78)}\n`);
    }
  }

  const common: StoreRunOptions = {
    repoRoot: REPO_ROOT, clientCounts: args.clients, warmupMs, durationMs, serverEnv,
    onRow: (r) => console.log(`  ${r.store} ${r.op} x${r.clients}: ${r.opsPerSec.toFixed(0)} ops/s, p50 ${r.p50Ms.toFixed(2)} ms, p99 ${r.p99Ms.toFixed(2)} ms${r.errors ? `, ${r.errors} errors (first: ${r.firstError})` : ""}`),
    log: (line) => console.log(`  ${line}`),
  };
  const raw: ResultRow[] = [];
  if (args.store !== "postgres" || pgSkipped) raw.push(...(await runPgliteStore(common)));
  if (args.store !== "pglite" && !pgSkipped) raw.push(...(await runPostgresStore({ ...common, adminUrl })));

  const rows = withRatios(raw);
  const goal = evaluateGoal(rows);
  console.log(`\n${formatTable(rows)}\n`);
  console.log("ratio vs baseline: ops/s over raw single-row INSERT transactions/s on the same PostgreSQL at the same client count");
  const ratio = goal.ratio === null ? "n/a" : `${(goal.ratio * 100).toFixed(1)}%`;
  console.log(`GOAL postgres signals/s at ${GOAL.clients} clients >= ${GOAL.minRatio * 100}% of baseline: ${ratio} -> ${goal.verdict}${goal.verdict === "N/A" ? ` (${goal.reason})` : ""}`);
  console.log(`NOTE: ${note}`);
  writeJsonReport(RESULTS_PATH, {
    generatedAt: new Date().toISOString(), machine, note, loadAverageBefore: loadBefore, loadAverageAfter: loadavg()[0],
    settings: { durationS: args.durationS, warmupS: warmupMs / 1000, clients: args.clients, store: args.store },
    postgresSkipped: pgSkipped ?? null, rows, goal,
  });
  console.log(`wrote ${RESULTS_PATH}`);
}

main().catch((e) => {
  console.error(`bench failed: ${(e as Error).message}`);
  process.exit(1);
});
