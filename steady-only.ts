import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCleanups } from "./bench/lib/bench-process";
import { memoryOf, registerGlobalNamespace, startClusterPair } from "./bench/lib/replication-clusters";
import { steadyPhase } from "./bench/lib/replication-phases";
const { own, cleanUp } = createCleanups();
const dir = mkdtempSync(join(tmpdir(), "tern-steady-"));
own(async () => rmSync(dir, { recursive: true, force: true }));
try {
  const [a, b] = await startClusterPair({ adminUrl: process.env.ADMIN_URL ?? "postgres://postgres@127.0.0.1:5432/postgres", dir, shards: 4, own });
  await registerGlobalNamespace(a, b, "bench-global");
  const r = await steadyPhase({ a, b, namespace: "bench-global", log: console.log }, { rate: Number(process.env.RATE ?? 250), clients: 32, durationMs: Number(process.env.DUR ?? 20) * 1000, warmupMs: 3000 });
  const f = r.flow;
  console.log(JSON.stringify({ lag: f.stampLagMs, split: f.lagSplitMs, cpu: f.cpuMsPerEvent, pages: f.bPages, cores: f.coresBusy, memA: memoryOf(a.proc.pid), memB: memoryOf(b.proc.pid) }));
} finally {
  await cleanUp();
}
