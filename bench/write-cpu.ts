/**
 * CPU per write on A's write path, for A/B comparisons on a shared machine: two clusters
 * on PostgreSQL, a global namespace, B's pull from A disabled (A's CPU is then its write
 * path alone), closed-loop signals and starts on A in rounds; prints A's server and
 * PostgreSQL CPU ms per write of each round and their medians.
 *
 *   bun bench/write-cpu.ts [--rounds 5] [--writes 2000] [--clients 16]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cpuOf, cpuPerEvent } from "./lib/cpu-usage";
import { median } from "./lib/percentiles";
import { registerGlobalNamespace, startClusterPair } from "./lib/replication-clusters";
import { writeOp } from "./lib/replication-workload";

const flag = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const [rounds, writes, clients] = [flag("rounds", 5), flag("writes", 2000), flag("clients", 16)];
const adminUrl = process.env.TERN_BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const cleanups: (() => Promise<unknown>)[] = [];
const dir = mkdtempSync(join(tmpdir(), "tern-bench-cpu-"));
try {
  const [a, b] = await startClusterPair({ adminUrl, dir, shards: 4, own: (c) => void cleanups.push(c) });
  await registerGlobalNamespace(a, b, "bench-global");
  await b.clients.operator.addOrUpdateRemoteCluster({ frontendAddress: a.proc.address, enableRemoteClusterConnection: false });
  const tern: number[] = [];
  const pg: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const op = writeOp(a.clients, "bench-global", `r${r}`);
    let next = 0;
    const before = { a: await cpuOf(a) };
    const t0 = performance.now();
    await Promise.all(Array.from({ length: clients }, async (_, c) => {
      for (let seq = 0; next < writes; seq++, next++) await op(c, seq);
    }));
    const s = (performance.now() - t0) / 1000;
    const used = cpuPerEvent(before, { a: await cpuOf(a) }, writes).a!;
    tern.push(used.tern);
    pg.push(used.pg);
    console.log(`round ${r + 1}: ${(writes / s).toFixed(0)} writes/s, A server ${used.tern.toFixed(3)} ms/write, A PostgreSQL ${used.pg.toFixed(3)} ms/write`);
  }
  console.log(`median: A server ${median(tern).toFixed(3)} ms/write, A PostgreSQL ${median(pg).toFixed(3)} ms/write`);
} finally {
  for (const c of cleanups.reverse()) await c().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
}
