import { expect, setDefaultTimeout, test } from "bun:test";
import { testEnv } from "../../test/support/env";
import { testStores } from "../../test/support/stores";
import { runRelayBaseline } from "./relay-baseline";

// Two processes, two databases and a second of load: more than bun test's default 5 s on a slow day.
setDefaultTimeout(60_000);

const onPostgres = (await testStores()).includes("postgres");

test.skipIf(!onPostgres)("the relay floor carries every row its source acknowledged to its sink, and times each", async () => {
  const r = await runRelayBaseline(testEnv.postgresUrl, { rate: 200, clients: 4, durationMs: 1_000, warmupMs: 200 });
  expect(r.load.errors).toBe(0);
  expect(r.load.ops).toBeGreaterThan(150);
  // Every acknowledged row of the measured run arrived, each once, after it was written.
  expect(r.rows).toBe(r.load.ops);
  expect(r.lagMs.count).toBe(r.rows);
  expect(r.lagMs.p50).toBeGreaterThan(0);
  expect(r.lagMs.max).toBeLessThan(10_000);
  expect(r.cpuMsPerEvent.source.tern).toBeGreaterThan(0);
  expect(r.cpuMsPerEvent.sink.pg).toBeGreaterThan(0);
});
