import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync } from "node:fs";
import postgres from "postgres";
import { inboundAckRows, outboundAcks } from "../../replication/ack-levels";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { POSTGRES_BIN, startPrivatePostgres } from "../../bench/lib/private-postgres";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { createGate } from "../support/gate";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr, expectSameHistories, globalNamespace, historiesOf } from "./support";

setDefaultTimeout(120_000);

const SHARDS = 4;
const NS = "orders";
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

/** Starts `runs` workflows on a, named prefix-i, and signals each twice. */
async function write(a: TestCluster, prefix: string, runs: number): Promise<void> {
  const wf = a.client(WorkflowService);
  for (let i = 0; i < runs; i++) {
    const { runId } = await wf.startWorkflowExecution({ namespace: NS, workflowId: `${prefix}-${i}`, workflowType: "T", taskQueue: "q" });
    for (const signalName of ["s0", "s1"]) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: `${prefix}-${i}`, runId }, signalName });
  }
}

/**
 * Kills a backend of url's PostgreSQL (SIGKILL): the postmaster ends every other one and starts
 * over (restart_after_crash), its WAL buffers lost as in a restart, its start time kept. Resolves
 * once it takes connections again.
 */
async function crashBackend(url: string): Promise<void> {
  const victim = postgres(url, { max: 1, onnotice: () => {} });
  const [{ pid }] = (await victim`select pg_backend_pid() as pid`) as unknown as [{ pid: number }];
  process.kill(pid, "SIGKILL");
  await victim.end({ timeout: 0 });
  await eventually(async () => {
    const probe = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 2 });
    try {
      await probe`select 1`;
    } finally {
      await probe.end({ timeout: 0 });
    }
  }, { timeout: 20_000, interval: 100 });
}

/** Shards whose ack on A is past where B's database says B applied. */
async function toldPastApplied(a: TestCluster, b: TestCluster): Promise<number[]> {
  const applied = new Map((await inboundAckRows(b.server.database.db)).filter((r) => r.remoteCluster === "clusterA" && r.queue === "history").map((r) => [r.shardId, r.ackLevel]));
  return [...(await outboundAcks(a.server.database.db, "clusterB"))].filter(([shardId, ack]) => ack > (applied.get(shardId) ?? 0)).map(([shardId]) => shardId);
}

// Needs PostgreSQL's binaries here (initdb, pg_ctl) as well as the test PostgreSQL: skipped where they are not, loudly.
const binaries = existsSync(`${POSTGRES_BIN}/initdb`);
if (!binaries) console.warn(`\n!!! no PostgreSQL binaries in ${POSTGRES_BIN}: the restart of B's PostgreSQL under a running B is SKIPPED !!!\n`);

/**
 * A (on the test PostgreSQL) replicating to B, whose database is a PostgreSQL instance of its
 * own, with its WAL writer slowed to once in 10 s: an apply's commit, which does not wait for its
 * flush, stays in the WAL buffers until B's flush (`durable`) writes it out. B applies a batch of
 * A's writes while that flush is held (as when it waits out an outage of B's PostgreSQL); then
 * B's PostgreSQL crashes (`pg_ctl stop -m immediate`, or one of its backends killed, after which
 * it starts over), taking those applies, and comes back, B running on. B's flush then goes through, on the restarted PostgreSQL, which holds none of them.
 * B takes A's tasks on a stream, whose acks go apart from its applies (ack-sender.ts); a pull,
 * whose next request carries them, failed at its next round on B's database during the outage.
 */
describe.if(binaries && (await testStores()).includes("postgres"))("B's PostgreSQL restarted under a running B, its last applies not flushed", () => {
  test.each(["restart", "backend crash"] as const)("TestApplyRestart (%s): A is never told of the applies the crash took, and B takes them from A again", async (crash) => {
    const pg = await startPrivatePostgres({ wal_writer_delay: "10s" });
    cleanups.push(() => pg.stop());
    let real: (() => Promise<unknown>) | undefined;
    const gate = createGate();
    const durable = async () => (await gate.held, await real!());
    const [a, b] = await startClusters("postgres", [{ shards: SHARDS }, { shards: SHARDS, dataLocation: pg.url("postgres"), serverOptions: { replication: { durable } } }]);
    cleanups.push(() => a.destroy(), () => b.destroy());
    // Run first (cleanups run last to first): a test failing with the flush held must not hold B's stop.
    cleanups.push(async () => gate.open());
    real = b.server.database.applies!.durable;
    await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
    const nsId = await globalNamespace(a, b, NS);
    await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
    await write(a, "first", 4);
    await eventually(() => expectSameHistories(a, b, nsId), { timeout: 20_000 });

    gate.close();
    await write(a, "second", 4);
    await eventually(async () => expect((await historiesOf(b, nsId)).some((e) => e.workflowId.startsWith("second-"))).toBe(true), { timeout: 20_000 });
    if (crash === "restart") {
      await pg.crash();
      await pg.start();
    } else await crashBackend(pg.url("postgres"));
    gate.open();

    // B takes again what the crash took, and A was never told past what B's database holds.
    await eventually(() => expectSameHistories(a, b, nsId), { timeout: 30_000 });
    expect(await toldPastApplied(a, b)).toEqual([]);
  });
});
