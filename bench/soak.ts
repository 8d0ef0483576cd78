/**
 * Soak: two tern clusters on PostgreSQL under paced load on A for minutes; samples both
 * servers' RSS (and peak), A's acked writes and B's applied events, and says whether RSS
 * stayed flat (bench/lib/soak-summary.ts). `bun run bench:soak`.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { argsOrExit, benchPostgresOrExit, createCleanups } from "./lib/bench-process";
import { runPaced, type PacedResult } from "./lib/paced-load";
import { eventCount, memoryOf, registerGlobalNamespace, startClusterPair, type BenchCluster } from "./lib/replication-clusters";
import { drain, measureFlow, type PhaseContext } from "./lib/replication-phases";
import { formatGoals } from "./lib/replication-report";
import { SIGNALS_PER_RUN, writeOp } from "./lib/replication-workload";
import { writeJsonReport } from "./lib/report";
import { parseSoakArgs } from "./lib/soak-args";
import { FLAT_DRIFT, FLAT_SLOPE_MB_PER_MIN, formatMinutes, perMinute, rssGoal, rssVerdict, WARMUP_S, WARMUP_SHARE, type SoakSample } from "./lib/soak-summary";

const log = (line: string) => console.log(line);
const load = () => loadavg().map((l) => l.toFixed(2)).join(" ");

const args = argsOrExit(parseSoakArgs);
const adminUrl = await benchPostgresOrExit();

// Clean-ups run last-registered first, once, on success, failure and Ctrl-C alike.
const { own, cleanUp } = createCleanups();

const memory = (c: BenchCluster) => {
  const m = memoryOf(c.proc.pid);
  if (!m) throw new Error(`${c.name}'s server exited during the soak`);
  return m;
};

/** Paced writes on A for the whole run; a reading of both servers every sample interval and once at the end. */
async function soak(ctx: PhaseContext, samples: SoakSample[]): Promise<PacedResult> {
  const stop = new AbortController();
  const write = writeOp(ctx.a.clients, ctx.namespace, "soak");
  let acked = 0;
  const t0 = performance.now();
  const paced = runPaced({
    rate: args.rate, clients: args.clients, durationMs: args.seconds * 1000, signal: stop.signal,
    op: async (client, seq) => {
      await write(client, seq);
      acked++;
    },
  });
  let ended = false;
  void paced.then(() => (ended = true));
  try {
    for (;;) {
      const [a, b] = [memory(ctx.a), memory(ctx.b)];
      const s = { t: (performance.now() - t0) / 1000, aRssMb: a.rssMb, aPeakMb: a.peakMb, bRssMb: b.rssMb, bPeakMb: b.peakMb, aAckedOps: acked, bEvents: await eventCount(ctx.b) };
      samples.push(s);
      if (ended) break;
      if (samples.length % Math.max(1, Math.round(60 / args.sampleSeconds)) === 1) {
        log(`  t=${s.t.toFixed(0)}s  RSS A ${s.aRssMb.toFixed(0)} MB, B ${s.bRssMb.toFixed(0)} MB  A acked ${s.aAckedOps}, B applied ${s.bEvents} events  load avg ${load()}`);
      }
      await Promise.race([paced, Bun.sleep(args.sampleSeconds * 1000)]);
    }
  } finally {
    stop.abort();
  }
  return paced;
}

/**
 * Starts args.fillRuns runs on A, args.clients at a time, and waits until B has applied them: the
 * engine's run cache and B's then hold all the rows they keep, so the readings after them see
 * caches that no longer grow (filling them is growth with a bound, about 10 MB of A's RSS at
 * 300 ops/s, where new runs come about 14 a second and would fill A's in some 290 s).
 */
async function fillRunCaches(ctx: PhaseContext): Promise<{ runs: number; seconds: number }> {
  const t0 = performance.now();
  const start = writeOp(ctx.a.clients, ctx.namespace, "soak-fill");
  let next = 0;
  await Promise.all(
    Array.from({ length: args.clients }, async (_, client) => {
      for (let k = next++; k < args.fillRuns; k = next++) await start(client, k * (SIGNALS_PER_RUN + 1));
    }),
  );
  await drain(ctx);
  return { runs: args.fillRuns, seconds: (performance.now() - t0) / 1000 };
}

const dir = mkdtempSync(join(tmpdir(), "tern-bench-soak-"));
own(async () => rmSync(dir, { recursive: true, force: true }));
const startedAt = new Date();
const loadAverageAtStart = loadavg();
try {
  log(`tern soak: ${args.seconds}s at ${args.rate} ops/s paced on A (${args.clients} clients), memory every ${args.sampleSeconds}s`);
  log(`load average at start: ${load()} (2-core machine, shared)`);
  const [a, b] = await startClusterPair({ adminUrl, dir, shards: 4, own });
  const ctx: PhaseContext = { a, b, namespace: "bench-global", log };
  await registerGlobalNamespace(a, b, ctx.namespace);
  const fill = args.fillRuns ? await fillRunCaches(ctx) : { runs: 0, seconds: 0 };
  if (fill.runs) log(`filled the run caches first: ${fill.runs} runs started on A and applied on B in ${fill.seconds.toFixed(1)} s`);
  const samples: SoakSample[] = [];
  let paced!: PacedResult;
  // measureFlow adds the lag of the whole run (apply stamps, B's histogram) once B has drained.
  const flow = await measureFlow(ctx, async () => (paced = await soak(ctx, samples)));
  const loadAverageAtEnd = loadavg();
  const verdicts = {
    [a.name]: rssVerdict(samples.map((s) => ({ t: s.t, rssMb: s.aRssMb })), args.seconds),
    [b.name]: rssVerdict(samples.map((s) => ({ t: s.t, rssMb: s.bRssMb })), args.seconds),
  };
  const goals = Object.entries(verdicts).map(([name, v]) => rssGoal(name, v));
  const minutes = perMinute(samples, args.seconds);
  const last = samples.at(-1)!;
  const ms = (l: { p50: number; p99: number; max: number }) => `p50 ${l.p50.toFixed(0)} ms, p99 ${l.p99.toFixed(0)} ms, max ${l.max.toFixed(0)} ms`;

  log(`\n${formatMinutes(minutes)}`);
  log(`\nA acked ${flow.opsPerSec.toFixed(1)} ops/s (target ${args.rate}), ${flow.errors} errors, ${paced.late} started >100 ms late; B applied ${flow.bApplyEventsPerSec.toFixed(0)} events/s`);
  log(`lag, event time on A (before its commit) -> B apply, whole run: ${ms(flow.stampLagMs)} (${flow.stampLagMs.count} events); drained ${flow.drainMs.toFixed(0)} ms after the load`);
  log(`peak RSS (VmHWM): A ${last.aPeakMb.toFixed(0)} MB, B ${last.bPeakMb.toFixed(0)} MB`);
  log(`\ngoals:\n${formatGoals(goals)}`);
  log(`\nload average at end: ${load()}`);

  const path = join(import.meta.dir, "results", "soak-latest.json");
  writeJsonReport(path, {
    startedAt: startedAt.toISOString(), args, loadAverageAtStart, loadAverageAtEnd,
    thresholds: { warmupS: WARMUP_S, warmupShare: WARMUP_SHARE, flatDrift: FLAT_DRIFT, flatSlopeMbPerMin: FLAT_SLOPE_MB_PER_MIN },
    fill, achievedOpsPerSec: flow.opsPerSec, late: paced.late, writeLatencyMs: paced.latencyMs,
    flow, goals, verdicts, minutes, samples,
  });
  log(`wrote ${path}`);
} catch (e) {
  console.error(`soak failed: ${(e as Error).stack ?? e}`);
  process.exitCode = 1;
} finally {
  await cleanUp();
}
