import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import postgres from "postgres";
import { runTern, startClusterProcess, type ClusterProcess, type ClusterProcessOptions, type TernResult } from "../../scripts/lib/cluster-process";
import { EventType } from "../../src/gen/tern/common/v1/common_pb";
import { ReplicationState } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { mulberry32 } from "../conflict/support";
import { eventually } from "../support/eventually";
import { testEnv } from "../support/env";
import { createTestDatabase } from "../support/postgres";
import { scratchDir } from "../support/scratch-dir";
import { testStores } from "../support/stores";

/** Replay a run with TERN_CRASH_SEED=<the seed it printed>; TERN_CRASH_ROUNDS=20 kills more often. */
const SEED = Number(testEnv.crashSeed ?? 7);
const ROUNDS = Number(testEnv.crashRounds ?? 2);
setDefaultTimeout(120_000 + ROUNDS * 120_000);

const NS = "orders";
const IDS = ["w0", "w1", "w2", "w3"];
/** A run the load leaves alone: a DLQ round's few writes go to it, so a merge has a bounded DLQ to work through. */
const HELD = "held";
const client = (p: ClusterProcess) => createClient(WorkflowService, createConnectTransport({ baseUrl: `http://${p.address}` }));

/** Events of every run of IDS on p, as comparable strings (id, version, type, signal name), every page. */
async function histories(p: ClusterProcess): Promise<string[]> {
  const all: string[] = [];
  for (const workflowId of [...IDS, HELD]) {
    let nextPageToken: Uint8Array | undefined;
    do {
      const page = await client(p).getWorkflowExecutionHistory({ namespace: NS, execution: { workflowId }, maximumPageSize: 1000, nextPageToken });
      for (const e of page.history!.events) {
        const name = e.attributes.case === "workflowExecutionSignaledEventAttributes" ? e.attributes.value.signalName : "";
        all.push(`${workflowId} ${e.eventId}@${e.version}:${EventType[e.eventType]}:${name}`);
      }
      nextPageToken = page.nextPageToken.length ? page.nextPageToken : undefined;
    } while (nextPageToken);
  }
  return all;
}

/** The namespace as p sees it: what must agree between the clusters once links are healed. */
async function namespaceOn(p: ClusterProcess) {
  const ns = (await client(p).describeNamespace({ namespace: NS })).namespace!;
  return {
    active: ns.replicationConfig!.activeClusterName,
    state: ReplicationState[ns.replicationConfig!.state],
    failoverVersion: ns.failoverVersion,
    description: ns.namespaceInfo!.description,
  };
}

/** Writers signalling (with start) the runs of IDS through either cluster until stopped; acked holds what a cluster acknowledged. */
function writeLoad(clusters: () => ClusterProcess[], rng: () => number) {
  const acked: string[] = [];
  let stopped = false;
  const done = IDS.map(async (workflowId) => {
    for (let n = 0; !stopped; n++) {
      const signalName = `${workflowId}-${n}`;
      const via = clusters()[Math.floor(rng() * 2)]!;
      const call = { namespace: NS, workflowId, workflowType: "t", taskQueue: "q", signalName, requestId: signalName };
      // A call the kill cut, or one refused meanwhile, is not acknowledged: its writer waits a moment and goes on.
      await client(via).signalWithStartWorkflowExecution(call, { timeoutMs: 15_000 }).then(() => acked.push(signalName), () => Bun.sleep(50));
    }
  });
  return { acked, stop: () => ((stopped = true), Promise.all(done)) };
}

/** Where in a round the victim is killed (a DLQ merge on PostgreSQL only, where the test can reach the passive's database: a kill at writes on PGlite). */
const POINTS = ["writes", "graceful failover", "namespace update", "dlq merge"] as const;

/** Makes url's database refuse (on) or take again (off) the events of run HELD: its replication tasks go to the DLQ meanwhile. */
async function refuseHeld(url: string, on: boolean): Promise<void> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    if (!on) return void (await sql.unsafe("drop trigger if exists refuse_held on history_events"));
    await sql.unsafe(`create or replace function refuse_held() returns trigger language plpgsql as $$
      begin if new.workflow_id = '${HELD}' then raise exception 'refused for the test'; end if; return new; end $$`);
    await sql.unsafe("create trigger refuse_held before insert on history_events for each row execute function refuse_held()");
  } finally {
    await sql.end({ timeout: 1 });
  }
}

/** The DLQ entries p holds. */
async function dlqOf(p: ClusterProcess): Promise<unknown[]> {
  const r = await runTern(["--address", p.address, "replication", "dlq", "list", "-o", "json"]);
  if (r.code !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout).entries ?? [];
}

for (const store of await testStores()) {
  describe(`a cluster process killed (SIGKILL) at a random point on ${store} (seed ${SEED}, ${ROUNDS} rounds)`, () => {
    // Kept, with the servers' logs, when the test fails (a seed to replay): the line says where.
    const scratch = scratchDir("crash-loop-");
    const dir = scratch.dir;
    const dbs: { url: string; drop(): Promise<void> }[] = [];
    const running: ClusterProcess[] = [];
    afterAll(async () => {
      await Promise.all(running.map((p) => p.stop()));
      for (const d of dbs) await d.drop();
      scratch.done();
    });

    test("TestKilledAtARandomPointKeepsEveryAcknowledgedWriteAndEndsEqualWithOneActiveCluster", async () => {
      const rng = mulberry32(SEED);
      // PostgreSQL's rounds go on from where PGlite's left off.
      const first = Math.floor(rng() * POINTS.length) + (store === "postgres" ? ROUNDS : 0);
      if (store === "postgres") dbs.push(await createTestDatabase(), await createTestDatabase());
      const options: ClusterProcessOptions[] = [
        { name: "clusterA", initialFailoverVersion: 1, dir, databaseUrl: dbs[0]?.url, logLevel: "warn" },
        { name: "clusterB", initialFailoverVersion: 2, dir, databaseUrl: dbs[1]?.url, logLevel: "warn" },
      ];
      // One after the other: two free ports picked at once may be one.
      const clusters: ClusterProcess[] = [];
      for (const o of options) running.push(clusters[clusters.length] = await startClusterProcess(o));
      options.forEach((o, i) => (o.port = clusters[i]!.port));
      for (const [x, y] of [[0, 1], [1, 0]] as const) {
        const r = await runTern(["--address", clusters[x]!.address, "admin", "cluster", "upsert-remote-cluster", "--frontend_address", clusters[y]!.address]);
        expect(r.code).toBe(0);
      }
      await client(clusters[0]!).registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await eventually(() => namespaceOn(clusters[1]!), { timeout: 30_000 });
      await client(clusters[0]!).signalWithStartWorkflowExecution({ namespace: NS, workflowId: HELD, workflowType: "t", taskQueue: "q", signalName: "start" });
      const load = writeLoad(() => clusters, mulberry32(SEED ^ 0x5eed));
      try {
        for (let round = 0; round < ROUNDS; round++) {
          const victim = Math.floor(rng() * 2);
          // Each point in turn from a drawn one, so that a few rounds see them all.
          const point = POINTS[(first + round) % POINTS.length]!;
          const after = 10 + Math.floor(rng() * 60);
          const what = `seed ${SEED} round ${round}: kill ${options[victim]!.name} at ${point}, ${after} acks in`;
          console.log(what);
          const active = (await namespaceOn(clusters[0]!)).active === "clusterA" ? 0 : 1;
          const from = load.acked.length;
          await eventually(() => expect(load.acked.length).toBeGreaterThan(from + after), { timeout: 30_000 });
          let command: Promise<TernResult> | undefined;
          if (point === "dlq merge" && store === "postgres") {
            await refuseHeld(dbs[1 - active]!.url, true);
            for (let i = 0; i < 8; i++) {
              const signalName = `${HELD}-${round}-${i}`;
              await client(clusters[active]!).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: HELD }, signalName, requestId: signalName });
              load.acked.push(signalName);
            }
            await eventually(async () => expect((await dlqOf(clusters[1 - active]!)).length).toBe(8), { timeout: 30_000, interval: 250 });
            await refuseHeld(dbs[1 - active]!.url, false);
            command = runTern(["--address", clusters[1 - active]!.address, "replication", "dlq", "merge"]);
          }
          if (point === "graceful failover") {
            command = runTern(["--address", clusters[active]!.address, "operator", "namespace", "failover", "-n", NS, "--to", options[1 - active]!.name, "--timeout", "10s"]);
          } else if (point === "namespace update") {
            command = runTern(["--address", clusters[active]!.address, "operator", "namespace", "update", "-n", NS, "--description", `round ${round}`]);
          }
          let ended = false;
          void command?.finally(() => (ended = true));
          if (point === "graceful failover") {
            // Killed in the HANDOVER (writes wait through it), or as the command ends if it was missed.
            await eventually(async () => expect(ended || (await namespaceOn(clusters[active]!)).state === "HANDOVER").toBe(true), { timeout: 30_000, interval: 5 });
          } else if (point === "dlq merge" && store === "postgres") {
            // Killed once the merge took its first entries, or as it ends if it was missed.
            const sql = postgres(dbs[1 - active]!.url, { max: 1, onnotice: () => {} });
            const left = async () => ((await sql`select count(*)::int as n from replication_dlq`) as unknown as [{ n: number }])[0].n;
            await eventually(async () => expect(ended || (await left()) < 8).toBe(true), { timeout: 30_000, interval: 5 }).finally(() => sql.end({ timeout: 1 }));
          } else {
            // A few more writes, so the kill lands while the command works (or just after it).
            const at = load.acked.length + Math.floor(rng() * 8);
            await eventually(() => expect(load.acked.length).toBeGreaterThanOrEqual(at), { timeout: 30_000 });
          }
          // The restart keeps the killed process's log beside its own (server.run-N.log, scripts/lib/cluster-process.ts).
          await clusters[victim]!.crash();
          const down = await runTern(["--address", clusters[victim]!.address, "operator", "namespace", "describe", "-n", NS]);
          expect({ what, code: down.code, trace: /\n\s+at /.test(down.stderr) }).toEqual({ what, code: 1, trace: false });
          const said = await command;
          const t0 = Date.now();
          clusters[victim] = await startClusterProcess(options[victim]!);
          const ns = await namespaceOn(clusters[victim]!);
          console.log(`  ${point} said: ${said ? `exit ${said.code} ${(said.stdout + said.stderr).trim().split("\n").at(-1)}` : "-"}; restarted in ${Date.now() - t0} ms, active ${ns.active} (${ns.state})`);
          running[victim] = clusters[victim]!;
          // What a merge the kill cut left (or one that took entries the kill's moment sent there) is merged again.
          await eventually(async () => {
            if ((await dlqOf(clusters[1 - active]!)).length) expect((await runTern(["--address", clusters[1 - active]!.address, "replication", "dlq", "merge"])).code).toBe(0);
            expect(await dlqOf(clusters[1 - active]!)).toEqual([]);
          }, { timeout: 30_000, interval: 500 });
          // Writes go on through both after the restart.
          const since = load.acked.length;
          await eventually(() => expect(load.acked.length).toBeGreaterThan(since + 20), { timeout: 60_000 });
        }
      } finally {
        await load.stop();
      }
      const [a, b] = clusters as [ClusterProcess, ClusterProcess];
      const want = await histories(a);
      await eventually(async () => expect(await histories(b)).toEqual(await histories(a)), { timeout: 60_000 });
      const signals = want.map((e) => e.split(":")[2]).filter(Boolean);
      expect({ seed: SEED, duplicates: signals.length - new Set(signals).size }).toEqual({ seed: SEED, duplicates: 0 });
      const present = new Set(signals);
      expect({ seed: SEED, lost: load.acked.filter((name) => !present.has(name)) }).toEqual({ seed: SEED, lost: [] });
      await eventually(async () => {
        const [na, nb] = await Promise.all([namespaceOn(a), namespaceOn(b)]);
        expect({ seed: SEED, b: nb }).toEqual({ seed: SEED, b: na });
        expect(na.state).toBe("NORMAL");
      }, { timeout: 30_000 });
      console.log(`seed ${SEED}: ${ROUNDS} kills, ${load.acked.length} acknowledged writes, all there on both clusters`);
      scratch.passed();
    });
  });
}
