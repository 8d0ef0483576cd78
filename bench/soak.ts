/**
 * Soak: two tern clusters on PostgreSQL under paced load on A for several minutes; samples
 * both servers' RSS and says whether it stayed flat (bench/lib/soak-summary.ts).
 *
 *   bun bench/soak.ts [--seconds 300] [--rate 500] [--clients 32] [--sample-seconds 5]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { unreachableReason } from "./lib/pg-database";
import { runPaced } from "./lib/paced-load";
import { eventCount, memoryOf, registerGlobalNamespace, startClusterPair } from "./lib/replication-clusters";
import { writeOp } from "./lib/replication-workload";
import { writeJsonReport } from "./lib/report";
import { FLAT_DRIFT, FLAT_SLOPE_MB_PER_MIN, rssVerdict, type RssSample } from "./lib/soak-summary";

const USAGE = "usage: bun bench/soak.ts [--seconds 300] [--rate 500] [--clients 32] [--sample-seconds 5]";
const opts: Record<string, number> = { seconds: 300, rate: 500, clients: 32, "sample-seconds": 5 };
for (let i = 2; i < process.argv.length; i += 2) {
  const name = process.argv[i]!.replace(/^--/, "");
  const n = Number(process.argv[i + 1]);
  if (!(name in opts) || !Number.isFinite(n) || n <= 0) {
    console.error(`bad flag ${process.argv[i]} ${process.argv[i + 1] ?? ""}\n${USAGE}`);
    process.exit(2);
  }
  opts[name] = n;
}
const { seconds, rate, clients } = opts as { seconds: number; rate: number; clients: number };
const sampleMs = opts["sample-seconds"]! * 1000;
const adminUrl = process.env.TERN_BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const why = await unreachableReason(adminUrl);
if (why) {
  console.error(`PostgreSQL is not reachable (${why}); set TERN_BENCH_PG_URL`);
  process.exit(1);
}

const load = () => loadavg().map((l) => l.toFixed(2)).join(" ");
const cleanups: (() => Promise<unknown>)[] = [];
const dir = mkdtempSync(join(tmpdir(), "tern-bench-soak-"));
const cleanUp = async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch((e) => console.error(`clean-up: ${(e as Error).message}`));
  rmSync(dir, { recursive: true, force: true });
};
process.on("SIGINT", () => void cleanUp().finally(() => process.exit(130)));
try {
  console.log(`tern soak: ${seconds}s at ${rate} ops/s paced on A (${clients} clients), RSS every ${sampleMs / 1000}s; load average ${load()}`);
  const [a, b] = await startClusterPair({ adminUrl, dir, shards: 4, own: (c) => void cleanups.push(c) });
  await registerGlobalNamespace(a, b, "bench-global");
  const samples: { t: number; a: number; b: number; aEvents: number; bEvents: number }[] = [];
  const stop = new AbortController();
  const t0 = Date.now();
  const paced = runPaced({ rate, clients, durationMs: seconds * 1000, signal: stop.signal, op: writeOp(a.clients, "bench-global", "soak") });
  let running = true;
  void paced.finally(() => (running = false));
  while (running) {
    const [ma, mb] = [memoryOf(a.proc.pid), memoryOf(b.proc.pid)];
    if (!ma || !mb) throw new Error("a server exited during the soak");
    const s = { t: (Date.now() - t0) / 1000, a: ma.rssMb, b: mb.rssMb, aEvents: await eventCount(a), bEvents: await eventCount(b) };
    samples.push(s);
    if (samples.length % Math.max(1, Math.round(60_000 / sampleMs)) === 1) {
      console.log(`  t=${s.t.toFixed(0)}s  RSS A ${s.a.toFixed(0)} MB, B ${s.b.toFixed(0)} MB  events A ${s.aEvents}, B ${s.bEvents}`);
    }
    await Promise.race([Bun.sleep(sampleMs), paced]);
  }
  const result = await paced;
  const verdict = (pick: (s: (typeof samples)[number]) => number): ReturnType<typeof rssVerdict> =>
    rssVerdict(samples.map((s): RssSample => ({ t: s.t, rssMb: pick(s) })), seconds);
  const verdicts = { clusterA: verdict((s) => s.a), clusterB: verdict((s) => s.b) };
  console.log(`\nA acked ${result.opsPerSec.toFixed(0)} ops/s (target ${rate}), ${result.errors} errors; load average ${load()}`);
  for (const [name, v] of Object.entries(verdicts)) {
    console.log(
      `${v.flat ? "PASS" : "MISS"}  RSS flat, ${name}: first minute after ${v.warmupS}s warm-up ${v.firstMinuteMedianMb.toFixed(0)} MB, ` +
        `last minute ${v.lastMinuteMedianMb.toFixed(0)} MB (${((v.driftRatio - 1) * 100).toFixed(1)}%, limit ±${FLAT_DRIFT * 100}%), ` +
        `slope ${v.slopeMbPerMin.toFixed(2)} MB/min (limit ${FLAT_SLOPE_MB_PER_MIN}); lowest reading ${v.firstMinuteFloorMb.toFixed(0)} -> ${v.lastMinuteFloorMb.toFixed(0)} MB`,
    );
  }
  const path = join(import.meta.dir, "results", "soak-latest.json");
  writeJsonReport(path, { startedAt: new Date(t0).toISOString(), seconds, rate, clients, achievedOpsPerSec: result.opsPerSec, errors: result.errors, loadAverageEnd: loadavg(), verdicts, samples });
  console.log(`wrote ${path}`);
} catch (e) {
  console.error(`soak failed: ${(e as Error).stack ?? e}`);
  process.exitCode = 1;
} finally {
  await cleanUp();
}
