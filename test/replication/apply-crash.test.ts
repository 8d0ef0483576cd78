import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync } from "node:fs";
import postgres from "postgres";
import { inboundAckRows, outboundAcks } from "../../replication/ack-levels";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { openDatabase } from "../../src/persistence/database";
import { POSTGRES_BIN, startPrivatePostgres } from "../../bench/lib/private-postgres";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { createGate } from "../support/gate";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr, expectSameHistories, globalNamespace, historiesOf, lastTaskIds } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const SHARDS = 4;
const NS = "orders";
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

/** Starts `runs` workflows on a and signals each `signals` times. */
async function write(a: TestCluster, prefix: string, runs: number, signals: number): Promise<void> {
  const wf = a.client(WorkflowService);
  for (let i = 0; i < runs; i++) {
    const { runId } = await wf.startWorkflowExecution({ namespace: NS, workflowId: `${prefix}-${i}`, workflowType: "T", taskQueue: "q" });
    for (let j = 0; j < signals; j++) {
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: `${prefix}-${i}`, runId }, signalName: `s${j}` });
    }
  }
}

/**
 * A (on the test PostgreSQL) and B, on a PostgreSQL instance of its own whose WAL writer is
 * slowed to once in 10 s (an apply's commit record stays in its WAL buffers until a synchronous
 * commit on B writes it out), connected, with global namespace NS. gated: B's flush (its own
 * `durable`) is held while gate is closed; else a no-op. B takes A's tasks on a stream, or, when
 * A does not serve one (a source from before it), by pulls.
 */
async function gatedPair(gated: boolean, protocol: "stream" | "pull") {
  const pg = await startPrivatePostgres({ wal_writer_delay: "10s" });
  cleanups.push(() => pg.stop());
  let real: (() => Promise<unknown>) | undefined;
  const gate = createGate();
  // How many of B's flushes wait at the gate now.
  let waiting = 0;
  const held = async () => {
    waiting++;
    await gate.held;
    waiting--;
  };
  const durable = gated ? async () => (await held(), await real!()) : async () => {};
  const aOptions = { shards: SHARDS, serverOptions: { replication: { serveStream: () => protocol === "stream" } } };
  const [a, b] = await startClusters("postgres", [aOptions, { shards: SHARDS, dataLocation: pg.url("postgres"), serverOptions: { replication: { durable } } }]);
  cleanups.push(() => a.destroy(), () => b.destroy());
  // Run first (cleanups run last to first): a test failing with the flush held must not hold B's stop.
  cleanups.push(async () => gate.open());
  real = b.server.database.applies!.durable;
  await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
  const nsId = await globalNamespace(a, b, NS);
  await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
  return { pg, gate, a, b, nsId, waiting: () => waiting };
}

/**
 * A (on the test PostgreSQL) replicating to B, whose database is a PostgreSQL instance of its
 * own. B applies two batches of A's writes, A hearing of each in full, then a third; then B's
 * PostgreSQL crashes (`pg_ctl stop -m immediate`: what its WAL buffers held is gone) and
 * recovers. The WAL writer is slowed to once in 10 s, so an apply's commit record stays in
 * those buffers until a synchronous commit on B writes it out.
 * - gated (B's own `durable`): the flush is held through the third batch, so what B applies of
 *   it is not durable and A is not told of it; the crash takes it.
 * - not gated (a no-op `durable`): A hears of the third batch as of the others.
 */
async function crashAfterApplies(gated: boolean, protocol: "stream" | "pull" = "stream") {
  const { pg, gate, a, b, nsId } = await gatedPair(gated, protocol);
  const bUrl = pg.url("postgres");

  const toldOf = () => outboundAcks(a.server.database.db, "clusterB");
  let acked = new Map<number, number>();
  for (const batch of ["first", "second", "third"]) {
    if (batch === "third" && gated) gate.close();
    await write(a, batch, 4, 3);
    if (batch === "third" && gated) {
      // Applied, not durable. A pull stops at its next request, which waits for the flush to tell
      // A of the apply before it; a stream goes on applying. Either way: some of it is applied.
      await eventually(async () => expect((await historiesOf(b, nsId)).some((e) => e.workflowId.startsWith("third-"))).toBe(true), { timeout: 20_000 });
      break;
    }
    await eventually(() => expectSameHistories(a, b, nsId), { timeout: 20_000 });
    acked = await lastTaskIds(a);
    await eventually(async () => {
      const told = await toldOf();
      for (const [shardId, id] of acked) if (id > 0) expect(told.get(shardId)).toBe(id);
    }, { timeout: 20_000 });
  }

  await pg.crash();
  // B's calls to its database fail from here: it can tell A nothing it applied after this.
  gate.open();
  await b.stop();
  const told = await toldOf();
  await pg.start();
  const recovered = new Map<number, number>();
  const database = await openDatabase({ postgres: { url: bUrl } });
  try {
    for (const r of await inboundAckRows(database.db)) if (r.remoteCluster === "clusterA" && r.queue === "history") recovered.set(r.shardId, r.ackLevel);
  } finally {
    await database.close();
  }
  return { a, bUrl, nsId, told, recovered, acked, last: await lastTaskIds(a) };
}

/** Shards whose ack on A is past where B's recovered database says B applied. */
const toldPastRecovered = (told: Map<number, number>, recovered: Map<number, number>) =>
  [...told].filter(([shardId, ack]) => ack > (recovered.get(shardId) ?? 0)).map(([shardId]) => shardId);

// Needs PostgreSQL's binaries here (initdb, pg_ctl) as well as the test PostgreSQL: skipped where they are not, loudly.
const binaries = existsSync(`${POSTGRES_BIN}/initdb`);
if (!binaries) console.warn(`\n!!! no PostgreSQL binaries in ${POSTGRES_BIN}: the crash of B's PostgreSQL is SKIPPED !!!\n`);

describe.if(binaries && (await testStores()).includes("postgres"))("a crash of B's PostgreSQL while its applies commit asynchronously", () => {
  test.each(["stream", "pull"] as const)("LosesOnlyAppliesTheSourceStillKeeps (%s): A's acks stay within what B recovered, and B takes the rest from A again", async (protocol) => {
    const { a, bUrl, nsId, told, recovered, acked, last } = await crashAfterApplies(true, protocol);
    // A heard of the first two batches and nothing of the third; B lost some of the third.
    for (const [shardId, id] of acked) expect(told.get(shardId) ?? 0).toBe(id);
    expect([...last].filter(([shardId, id]) => (recovered.get(shardId) ?? 0) < id).length).toBeGreaterThan(0);
    expect(toldPastRecovered(told, recovered)).toEqual([]);

    // B again, on its recovered database: it takes what it lost from A, which kept it.
    const b = await startTestCluster({ store: "postgres", name: "clusterB", initialFailoverVersion: 2, shards: SHARDS, dataLocation: bUrl });
    cleanups.push(() => b.destroy());
    await eventually(() => expectSameHistories(a, b, nsId), { timeout: 30_000 });
  });

  test("WithoutTheGate, the same crash loses applies A was told of (what the gate is for)", async () => {
    const { told, recovered, last } = await crashAfterApplies(false);
    // A heard of every task; B's database lost the last of them in some shard.
    for (const [shardId, id] of last) if (id > 0) expect(told.get(shardId)).toBe(id);
    expect(toldPastRecovered(told, recovered).length).toBeGreaterThan(0);
  });
});

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
/** Whether A was told of everything B applied of it: each shard's outbound ack on A at B's inbound ack. */
async function toldAllApplied(a: TestCluster, b: TestCluster): Promise<boolean> {
  const applied = (await inboundAckRows(b.server.database.db)).filter((r) => r.remoteCluster === "clusterA" && r.queue === "history");
  const told = await outboundAcks(a.server.database.db, "clusterB");
  return applied.length > 0 && applied.every((r) => told.get(r.shardId) === r.ackLevel);
}

async function toldPastApplied(a: TestCluster, b: TestCluster): Promise<number[]> {
  const applied = new Map((await inboundAckRows(b.server.database.db)).filter((r) => r.remoteCluster === "clusterA" && r.queue === "history").map((r) => [r.shardId, r.ackLevel]));
  return toldPastRecovered(await outboundAcks(a.server.database.db, "clusterB"), applied);
}

/**
 * As above, gated, but B runs on through the crash of its PostgreSQL (`pg_ctl stop -m immediate`
 * and start, or one of its backends killed, after which it starts over), which takes the applies
 * of the second batch: B's flush, held through them as when it waits out an outage of its
 * PostgreSQL, then goes through on the restarted PostgreSQL, which holds none of them. B takes
 * A's tasks on a stream, whose acks go apart from its applies (ack-sender.ts); a pull, whose next
 * request carries them, failed at its next round on B's database during the outage.
 */
describe.if(binaries && (await testStores()).includes("postgres"))("B's PostgreSQL restarted under a running B, its last applies not flushed", () => {
  test.each(["restart", "backend crash"] as const)("TestApplyRestart (%s): A is never told of the applies the crash took, and B takes them from A again", async (crash) => {
    const { pg, gate, a, b, nsId } = await gatedPair(true, "stream");
    await write(a, "first", 4, 2);
    await eventually(() => expectSameHistories(a, b, nsId), { timeout: 20_000 });

    gate.close();
    await write(a, "second", 4, 2);
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

  // The pull's variant of the above: B took A's tasks by pulls, caught up, its next request (which
  // tells A of the applies) waiting for the held flush, and nothing of the pull's on B's database
  // until it goes: the restart goes unseen but by the flush's answer, a run of PostgreSQL's other
  // than the pull's first. (Pulling while the restart came, a pull fails at its next apply instead.)
  test("TestApplyRestartUnderAWaitingPull: A is never told of the applies the restart took, and B takes them from A again", async () => {
    const { pg, gate, a, b, nsId, waiting } = await gatedPair(true, "pull");
    await write(a, "first", 4, 2);
    await eventually(() => expectSameHistories(a, b, nsId), { timeout: 20_000 });
    // The pull's request after the first batch's last page tells A of it once its flush went
    // through: closed before that, the gate held that request, and the second batch never came.
    await eventually(async () => expect(await toldAllApplied(a, b)).toBe(true), { timeout: 20_000 });

    gate.close();
    // One task, taken in one page: applied, not flushed, and the pull's next request waits for
    // the flush to tell A of it (a pull applies nothing more meanwhile).
    await write(a, "second", 1, 0);
    await eventually(async () => {
      expect((await historiesOf(b, nsId)).some((e) => e.workflowId === "second-0")).toBe(true);
      expect(waiting()).toBe(1);
    }, { timeout: 20_000 });
    await pg.crash();
    await pg.start();
    gate.open();

    await eventually(() => expectSameHistories(a, b, nsId), { timeout: 30_000 });
    expect(await toldPastApplied(a, b)).toEqual([]);
  });
});
