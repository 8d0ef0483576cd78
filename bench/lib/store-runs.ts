import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DatastoreConfig } from "../../src/config/schema";
import { runInsertBaseline } from "./insert-baseline";
import { createTempDatabase } from "./pg-database";
import { BASELINE_OP, rowOf, type ResultRow } from "./report";
import { startServerProcess } from "./server-process";
import { runTernPhases } from "./tern-phases";

/** What every store run shares. */
export interface StoreRunOptions {
  repoRoot: string;
  clientCounts: readonly number[];
  warmupMs: number;
  durationMs: number;
  /** Environment of the spawned server. */
  serverEnv: Record<string, string | undefined>;
  onRow: (row: ResultRow) => void;
  log: (line: string) => void;
}

/** The tern phases against a server on a PGlite data dir in a temp directory (removed after). */
export async function runPgliteStore(opts: StoreRunOptions): Promise<ResultRow[]> {
  const workDir = mkdtempSync(join(tmpdir(), "tern-bench-"));
  try {
    return await withServer(opts, workDir, { pglite: { dataDir: join(workDir, "pglite") } }, "pglite");
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }
}

/** Raw insert baseline, then the tern phases, in a fresh database on adminUrl's server (dropped after). */
export async function runPostgresStore(opts: StoreRunOptions & { adminUrl: string }): Promise<ResultRow[]> {
  const db = await createTempDatabase(opts.adminUrl);
  const workDir = mkdtempSync(join(tmpdir(), "tern-bench-"));
  opts.log(`database ${db.name} created`);
  try {
    const rows: ResultRow[] = [];
    // Baseline first, while no server process competes for the CPU.
    for (const clients of opts.clientCounts) {
      const result = await runInsertBaseline({ url: db.url, clients, warmupMs: opts.warmupMs, durationMs: opts.durationMs });
      const row = rowOf("postgres", BASELINE_OP, result);
      rows.push(row);
      opts.onRow(row);
    }
    rows.push(...(await withServer(opts, workDir, { postgres: { url: db.url } }, "postgres")));
    return rows;
  } finally {
    rmSync(workDir, { recursive: true, force: true });
    await db.drop().then(
      () => opts.log(`database ${db.name} dropped`),
      (e) => opts.log(`could not drop database ${db.name}: ${(e as Error).message}`),
    );
  }
}

async function withServer(opts: StoreRunOptions, workDir: string, datastore: DatastoreConfig, store: ResultRow["store"]) {
  const started = performance.now();
  const server = await startServerProcess({ repoRoot: opts.repoRoot, datastore, workDir, env: opts.serverEnv });
  opts.log(`${store}: tern server pid ${server.pid} healthy at ${server.baseUrl} after ${((performance.now() - started) / 1000).toFixed(1)} s`);
  try {
    return await runTernPhases({ store, baseUrl: server.baseUrl, ...opts });
  } catch (e) {
    throw new Error(`${(e as Error).message}\n--- server output ---\n${server.output()}`);
  } finally {
    await server.stop();
  }
}
