/**
 * Replication bench: two tern cluster processes on PostgreSQL, a global namespace, a
 * write load on A; lag, throughput, catch-up, failover and memory, each beside a
 * baseline (raw inserts; a minimal JavaScript relay; logical replication). `bun run bench:replication`.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { argsOrExit, clusterPostgres, createCleanups } from "./lib/bench-process";
import { runInsertBaseline } from "./lib/insert-baseline";
import { runLogicalBaseline, type LogicalResult } from "./lib/logical-baseline";
import { startPrivatePostgres } from "./lib/private-postgres";
import { createTempDatabase } from "./lib/pg-database";
import { writeJsonReport } from "./lib/report";
import { runRelayBaseline, type RelayResult } from "./lib/relay-baseline";
import { parseReplicationArgs } from "./lib/replication-args";
import { memoryOf, registerGlobalNamespace, startClusterPair } from "./lib/replication-clusters";
import { catchUpPhase, failoverPhase, saturatedPhase, steadyPhase, type PhaseContext } from "./lib/replication-phases";
import { buildReport } from "./lib/replication-summary";

const log = (line: string) => console.log(line);
const load = () => loadavg().map((l) => l.toFixed(2)).join(" ");

const args = argsOrExit(parseReplicationArgs);
// Clean-ups run last-registered first, once, on success, failure and Ctrl-C alike.
const { own, cleanUp } = createCleanups();
// With --own-postgres a private instance, registered first so it is stopped last.
const adminUrl = await clusterPostgres(args.ownPostgres, own);

const dir = mkdtempSync(join(tmpdir(), "tern-bench-repl-"));
// --keep-logs leaves the servers' logs (JSON lines, info level) for reading where the time went.
own(async () => (args.keepLogs ? log(`server logs kept in ${dir}`) : rmSync(dir, { recursive: true, force: true })));
const startedAt = new Date();
const ms = (s: number) => s * 1000;
try {
  log(`tern replication bench: duration ${args.durationS}s, rate ${args.rate}/s, clients ${args.clients}, catch-up pause ${args.catchupS}s, shards ${args.shards}`);
  log(`load average at start: ${load()} (2-core machine, shared); clusters on ${args.ownPostgres ? "a private PostgreSQL instance (track_commit_timestamp=on)" : "the PostgreSQL at 127.0.0.1:5432"}`);
  const [a, b] = await startClusterPair({ adminUrl, dir, shards: args.shards, own });
  const ctx: PhaseContext = { a, b, namespace: "bench-global", log };
  await registerGlobalNamespace(a, b, ctx.namespace);
  // Enough writers that A's latency, not the pool, limits a paced phase.
  const steadyClients = args.clients;

  log(`\n== steady: ${args.rate} ops/s paced on A (${steadyClients} clients) after ${args.warmupS}s of warm-up, probe every 100 ms`);
  const steady = await steadyPhase(ctx, { rate: args.rate, clients: steadyClients, durationMs: ms(args.durationS), warmupMs: ms(args.warmupS) });
  log(`  ${JSON.stringify(steady.flow)}\n  probe ${JSON.stringify(steady.probe)}  load avg ${load()}`);

  log(`\n== saturated: ${args.clients} closed-loop clients on A`);
  const saturated = await saturatedPhase(ctx, { clients: args.clients, durationMs: ms(args.durationS) });
  log(`  ${JSON.stringify(saturated)}  load avg ${load()}`);

  const failoverLoad = { rate: args.rate, clients: steadyClients };
  log(`\n== graceful failover A -> B under ${args.rate} ops/s`);
  const graceful = await failoverPhase(ctx, { ...failoverLoad, kind: "graceful", from: a, to: b, prefix: "gf" });
  log(`  ${JSON.stringify(graceful)}`);
  log(`\n== graceful failover B -> A (back)`);
  const gracefulBack = await failoverPhase(ctx, { ...failoverLoad, kind: "graceful", from: b, to: a, prefix: "gb" });
  log(`  ${JSON.stringify(gracefulBack)}`);
  log(`\n== catch-up: B's connection to A disabled ${args.catchupS}s under ${args.rate} ops/s`);
  const catchUp = await catchUpPhase(ctx, { rate: args.rate, clients: steadyClients, pauseMs: ms(args.catchupS) });
  log(`  ${JSON.stringify(catchUp)}  load avg ${load()}`);

  log(`\n== forced failover to B (UpdateNamespace on B) under ${args.rate} ops/s`);
  const forced = await failoverPhase(ctx, { ...failoverLoad, kind: "forced", from: a, to: b, prefix: "ff" });
  log(`  ${JSON.stringify(forced)}  load avg ${load()}`);

  const memory = { [a.name]: memoryOf(a.proc.pid), [b.name]: memoryOf(b.proc.pid) };
  // The clusters stop before the baselines so they do not compete with them for the CPU (a
  // private instance, registered first, stays for the raw INSERT baseline).
  await cleanUp(args.ownPostgres ? 1 : 0);

  log(`\n== baseline: raw single-row INSERTs, ${args.clients} clients`);
  const db = await createTempDatabase(adminUrl);
  own(() => db.drop());
  const insert = await runInsertBaseline({ url: db.url, clients: args.clients, warmupMs: 1000, durationMs: ms(args.durationS) });
  log(`  ${insert.opsPerSec.toFixed(0)} rows/s, p99 ${insert.latencyMs.p99.toFixed(2)} ms`);

  // The relay floor and logical replication run on one private instance started fresh for them
  // (wal_level=logical, track_commit_timestamp=on), the relay first, before the subscription exists.
  const baselinePg = args.skipRelay && args.skipLogical ? undefined : await startPrivatePostgres();
  if (baselinePg) own(() => baselinePg.stop());
  const paced = { rate: args.rate, clients: steadyClients, durationMs: ms(args.durationS), warmupMs: ms(args.warmupS) };
  let relay: RelayResult | undefined;
  if (baselinePg && !args.skipRelay) {
    log(`\n== baseline: relay floor at ${args.rate} rows/s (two minimal JavaScript processes, a long poll over HTTP; private instance)`);
    relay = await runRelayBaseline(baselinePg.url("postgres"), paced);
    log(`  ${JSON.stringify(relay.commitLagMs ?? relay.lagMs)} rows ${relay.rows}, CPU ms per row ${JSON.stringify(relay.cpuMsPerEvent)}`);
  }

  let logical: LogicalResult | undefined;
  if (baselinePg && !args.skipLogical) {
    log(`\n== baseline: PostgreSQL logical replication at ${args.rate} rows/s (the same private instance, wal_level=logical)`);
    logical = await runLogicalBaseline(baselinePg, paced);
    log(`  ${JSON.stringify(logical.lagMs)} rows ${logical.rows}`);
  }

  const report = buildReport({ args, startedAt, loadAverage: loadavg(), steady, saturated, catchUp, graceful, gracefulBack, forced, memory, insert, relay, logical });
  log(`\n${report.text}`);
  const path = join(import.meta.dir, "results", "replication-latest.json");
  writeJsonReport(path, report.json);
  log(`\nwrote ${path}`);
} catch (e) {
  console.error(`bench failed: ${(e as Error).stack ?? e}`);
  process.exitCode = 1;
} finally {
  await cleanUp();
}
