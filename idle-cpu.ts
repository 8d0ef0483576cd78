import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCleanups } from "./bench/lib/bench-process";
import { cpuOf } from "./bench/lib/cpu-usage";
import { registerGlobalNamespace, startClusterPair } from "./bench/lib/replication-clusters";
const { own, cleanUp } = createCleanups();
const dir = mkdtempSync(join(tmpdir(), "tern-idle-"));
own(async () => rmSync(dir, { recursive: true, force: true }));
try {
  const [a, b] = await startClusterPair({ adminUrl: "postgres://postgres@127.0.0.1:5432/postgres", dir, shards: 4, own });
  await registerGlobalNamespace(a, b, "bench-global");
  await Bun.sleep(3000);
  const [a0, b0] = [await cpuOf(a), await cpuOf(b)];
  const t0 = performance.now();
  await Bun.sleep(10000);
  const [a1, b1] = [await cpuOf(a), await cpuOf(b)];
  const s = (performance.now() - t0) / 1000;
  console.log(JSON.stringify({ a0, a1, b0, b1, s }));
} finally { await cleanUp(); }
