import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { ConnectError } from "@connectrpc/connect";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { ReplicationState } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { dlqLines, expectNoDifference, mulberry32 } from "../conflict/support";
import { testEnv } from "../support/env";
import { eventually } from "../support/eventually";
import { postgresReachable } from "../support/postgres";
import { newDataLocation, startTestCluster, type TestCluster } from "../support/server";
import type { StoreKind } from "../support/stores";
import { startTcpProxy, startTcpProxyFor, type TcpProxy } from "../support/tcp-proxy";
import { currentRun, requestIdOf, snapshot, violations, type Forced } from "./chaos-checks";
import { startLoad, type Load } from "./chaos-load";
import { addr, describeOn } from "./mesh";

setDefaultTimeout(300_000);

/** Replay a run with TERN_CHAOS_SEED=<the seed it printed>; TERN_CHAOS_STEPS=200 soaks longer; TERN_CHAOS_CLUSTERS=3 adds clusterC. */
const SEED = Number(testEnv.chaosSeed ?? 20261206) >>> 0;
const STEPS = Number(testEnv.chaosSteps ?? 30);
const NS = "orders";
const CLUSTERS = Number(testEnv.chaosClusters ?? 2);
const MAX_RESTARTS = 3;

interface Step {
  n: number;
  what: string;
  outcome: string;
}

const postgresUp = await postgresReachable();

/**
 * The soak on one store. On PostgreSQL each cluster's database is behind a proxy, so a crash
 * resets its connections under it; PGlite runs inside the server's process, so its restarts
 * stop the server and start it again on the same data directory, and it has no crash.
 */
function soak(store: StoreKind) {
  describe.skipIf(store === "postgres" && !postgresUp)(`failover soak on ${store} (${CLUSTERS} clusters, seed ${SEED}, ${STEPS} steps)`, () => {
    // The steps' own stream: the writers draw from another, so a seed replays the same steps whatever the writes' timing.
    const rng = mulberry32(SEED);
    const pick = <V>(xs: V[]): V => xs[Math.floor(rng() * xs.length)]!;
    const names = Array.from({ length: CLUSTERS }, (_, i) => `cluster${"ABC"[i]}`);
    let clusters: TestCluster[] = [];
    const databases: { location: string; remove(): Promise<void> }[] = [];
    /** Each cluster's PostgreSQL database behind a proxy: a crash first cuts it, as a crash would leave its transactions. */
    const dbProxies: { proxy: TcpProxy; url: string }[] = [];
    const dataLocation = (i: number) => (store === "postgres" ? dbProxies[i]!.url : databases[i]!.location);
    /** links[i][j]: how cluster i reaches cluster j's frontend. */
    const links: TcpProxy[][] = [];
    /** Pairs whose link is down, and how: "refuse" resets every connection, "hold" black-holes them. */
    const cut = new Map<string, "refuse" | "hold">();
    const forced: Forced[] = [];
    const steps: Step[] = [];
    let load: Load;

    const linkKey = (i: number, j: number) => `${Math.min(i, j)}-${Math.max(i, j)}`;
    function setCut(i: number, j: number, how: "refuse" | "hold" | undefined) {
      for (const p of [links[i]![j]!, links[j]![i]!]) {
        p.hold(how === "hold");
        p.refuse(how === "refuse");
        if (how === "refuse") p.cut();
      }
      if (how) cut.set(linkKey(i, j), how);
      else cut.delete(linkKey(i, j));
    }
    const frontend = (x: TestCluster) => ({ host: "127.0.0.1", port: Number(addr(x).split(":")[1]) });
    // Writes to a passive cluster are forwarded to the active one: a retry may land on either.
    const start = (i: number) =>
      startTestCluster({ store, name: names[i], initialFailoverVersion: i + 1, dataLocation: dataLocation(i), extraYaml: "dcRedirectionPolicy: { policy: selected-apis-forwarding }", serverOptions: { forwardTimeoutMs: 2_000 } });
    /** Clusters that describe the namespace as active on themselves. */
    async function selfActive(): Promise<number[]> {
      const seen = await Promise.all(clusters.map((x) => describeOn(x, NS).catch(() => undefined)));
      return seen.flatMap((ns, i) => (ns?.replicationConfig?.activeClusterName === names[i] ? [i] : []));
    }
    const message = (e: unknown) => (e instanceof ConnectError ? e.message : String(e)).slice(0, 160);

    async function graceful(): Promise<string> {
      const from = pick(await selfActive()) ?? 0;
      const to = pick(names.map((_, i) => i).filter((i) => i !== from));
      const res = await clusters[from]!.client(OperatorService)
        .failoverNamespace({ namespace: NS, targetCluster: names[to]!, timeout: { seconds: 3n } }, { timeoutMs: 15_000 })
        .then((r) => `ok, version ${r.namespace!.failoverVersion}`, message);
      return `graceful ${names[from]} -> ${names[to]}: ${res}`;
    }

    async function force(): Promise<string> {
      const active = await selfActive();
      const target = pick(names.map((_, i) => i).filter((i) => !active.includes(i) || active.length === names.length));
      const x = clusters[target]!;
      const before = (await describeOn(x, NS)).failoverVersion;
      // Asked of each cluster itself, links cut or not: what the target's copy may not have heard.
      const highest = (await Promise.all(clusters.map((c) => describeOn(c, NS).then((ns) => ns.failoverVersion, () => 0n)))).reduce((a, b) => (b > a ? b : a), 0n);
      const res = await x.client(WorkflowService).updateNamespace({ namespace: NS, activeClusterName: names[target]! }, { timeoutMs: 10_000 }).then(() => "ok", message);
      const after = await describeOn(x, NS);
      if (after.replicationConfig!.activeClusterName === x.name && after.failoverVersion !== before) {
        forced.push({ target: x.name, version: after.failoverVersion, seen: await snapshot(x, NS, load.invoked), stale: before < highest });
      }
      return `forced to ${x.name}: ${res}, version ${before} -> ${after.failoverVersion}`;
    }

    async function toggleLink(): Promise<string> {
      const i = Math.floor(rng() * CLUSTERS);
      const j = pick(names.map((_, k) => k).filter((k) => k !== i));
      const how = cut.has(linkKey(i, j)) ? undefined : rng() < 0.5 ? "refuse" : "hold";
      setCut(i, j, how);
      return `${how ?? "heal"} link ${names[i]} <-> ${names[j]}`;
    }

    /**
     * A restart on the same database: the server stops, or crashes (its connections to
     * PostgreSQL reset under it first), half of the time each, every time with
     * TERN_CHAOS_CRASH=1 (0: never); then a new server starts.
     */
    async function restart(): Promise<string> {
      const i = Math.floor(rng() * CLUSTERS);
      const db = dbProxies[i]?.proxy;
      // Drawn on PGlite too, so that a seed's steps are the same on both stores.
      const crash = (testEnv.chaosCrash ?? rng() < 0.5) && db !== undefined;
      if (crash) {
        db.refuse(true);
        db.cut();
      }
      const stopped = await Promise.race([clusters[i]!.stop().then(() => "stopped", message), new Promise<string>((r) => setTimeout(() => r("stop hung 20 s"), 20_000))]);
      db?.refuse(false);
      clusters[i] = await start(i);
      for (let j = 0; j < CLUSTERS; j++) if (j !== i) links[j]![i]!.retarget(frontend(clusters[i]!));
      return `${crash ? "crash" : "restart"} ${names[i]} (${stopped})`;
    }

    beforeAll(async () => {
      console.log(`failover soak: seed ${SEED}, ${STEPS} steps (replay with TERN_CHAOS_SEED=${SEED} TERN_CHAOS_STEPS=${STEPS})`);
      for (let i = 0; i < CLUSTERS; i++) {
        databases.push(await newDataLocation(store));
        if (store === "postgres") dbProxies.push(await startTcpProxyFor(databases[i]!.location));
      }
      clusters = await Promise.all(names.map((_, i) => start(i)));
      for (let i = 0; i < CLUSTERS; i++) links.push(await Promise.all(clusters.map((y) => startTcpProxy(frontend(y)))));
      for (let i = 0; i < CLUSTERS; i++) {
        for (let j = 0; j < CLUSTERS; j++) if (i !== j) await clusters[i]!.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: `127.0.0.1:${links[i]![j]!.port}` });
      }
      await clusters[0]!.client(WorkflowService).registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: names });
      await Promise.all(clusters.map((x) => eventually(async () => expect((await describeOn(x, NS)).failoverVersion).toBe(1n))));
    });
    afterAll(async () => {
      await Promise.all(clusters.map((x) => x.stop().catch(() => {})));
      for (const p of [...links.flat(), ...dbProxies.map((d) => d.proxy)]) await p.close();
      await Promise.all(databases.map((d) => d.remove()));
    });

    test("TestManyFailoversMixedWithLinkCutsAndRestartsLoseNoAcknowledgedWrite", async () => {
      load = startLoad({ namespace: NS, clusters: () => clusters, clients: 4, workflowsPerClient: 2, seed: SEED, rng: mulberry32(SEED ^ 0x5eed), strayRate: 0.25 });
      let restarts = 0;
      for (let n = 0; n < STEPS; n++) {
        const before = load.acks.length;
        // Writes go on between steps: a few land before the next fault (or a few seconds pass while none can).
        await eventually(() => expect(load.acks.length).toBeGreaterThanOrEqual(before + 5), { timeout: 3_000 }).catch(() => {});
        const r = rng();
        const what =
          r < 0.3 ? await graceful()
          : r < 0.45 ? await force()
          : r < 0.85 || restarts >= MAX_RESTARTS ? await toggleLink()
          : (restarts++, await restart());
        steps.push({ n, what, outcome: `${load.acks.length} acks` });
        console.log(`seed ${SEED} step ${n}: ${what} (${load.acks.length} acks so far)`);
      }

      // Heal everything; the namespace settles on one active cluster and version everywhere.
      for (let i = 0; i < CLUSTERS; i++) for (let j = i + 1; j < CLUSTERS; j++) setCut(i, j, undefined);
      await eventually(async () => {
        const seen = await Promise.all(clusters.map((x) => describeOn(x, NS)));
        expect(new Set(seen.map((ns) => `${ns.replicationConfig!.activeClusterName}@${ns.failoverVersion}/${ReplicationState[ns.replicationConfig!.state]}`))).toEqual(
          new Set([`${seen[0]!.replicationConfig!.activeClusterName}@${seen[0]!.failoverVersion}/NORMAL`]),
        );
      }, { timeout: 30_000 });
      // Every write a client still holds lands once the links are back: none is stuck.
      const stopped = await Promise.race([load.stop().then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 60_000))]);
      expect({ seed: SEED, stuckWrites: stopped ? [] : [...load.holding.values()] }).toEqual({ seed: SEED, stuckWrites: [] });
      console.log(`seed ${SEED}: ${load.acks.length} acknowledged writes (${load.acks.filter((a) => a.attempts > 1).length} after retries), ${forced.length} forced failovers`);

      const stats = { atRisk: 0 };
      await eventually(async () => {
        await expectNoDifference(clusters, NS);
        expect({ seed: SEED, violations: await violations(clusters, NS, load.acks, forced, load.started, stats) }).toEqual({ seed: SEED, violations: [] });
      }, { timeout: 60_000, interval: 500 }).catch(async (e) => {
        const dlq = (await Promise.all(clusters.map(dlqLines))).flat();
        throw new Error(`seed ${SEED} (replay with TERN_CHAOS_SEED=${SEED} TERN_CHAOS_STEPS=${STEPS}):\n${steps.map((s) => `${s.n} ${s.what}`).join("\n")}\n${(e as Error).message}\n${dlq.join("\n")}`);
      });

      console.log(`seed ${SEED}: ${stats.atRisk} of ${load.acks.length} acknowledged writes were at risk from a forced failover (checked present once, not in place)`);
      // No run is stuck: a new signal to each lands on the active cluster and reaches every cluster.
      const activeName = (await describeOn(clusters[0]!, NS)).replicationConfig!.activeClusterName;
      const active = clusters.find((x) => x.name === activeName)!;
      for (const workflowId of load.started) {
        await active.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId }, signalName: "probe", requestId: `probe-${SEED}-${workflowId}` });
      }
      await eventually(async () => {
        await expectNoDifference(clusters, NS);
        for (const x of clusters) {
          for (const workflowId of load.started) {
            const { events } = await currentRun(x, NS, workflowId);
            expect(`${x.name} ${workflowId}: ${events.filter((e) => requestIdOf(e) === `probe-${SEED}-${workflowId}`).length}`).toBe(`${x.name} ${workflowId}: 1`);
          }
        }
      }, { timeout: 30_000, interval: 250 });
      expect(load.unexpected).toEqual([]);
    });
  });
}

soak("postgres");
soak("pglite");
