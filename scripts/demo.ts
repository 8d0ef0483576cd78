/**
 * `bun run demo`: a five-minute tour of tern's multi-cluster replication. Starts clusters
 * A and B as two server processes, connects them with tctl's commands, replicates a global
 * namespace and its workflows, forwards a signal, fails over and back, and compares the
 * histories on both sides. Everything runs in a temp dir that is removed at the end.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ClusterProcess, healthOf, startClusterProcess } from "./lib/cluster-process";
import { createDemoRunner, DemoError, type DemoRunner } from "./lib/demo-runner";

const NS = "orders";
const ORDERS = ["order-1", "order-2", "order-3"];

interface Event {
  eventId: string;
  eventType: string;
  version: string;
  workflowExecutionSignaledEventAttributes?: { signalName: string };
}
interface Namespace {
  namespace: { replicationConfig?: { activeClusterName?: string }; failoverVersion?: string };
}

/** The events of a workflow on one cluster, or undefined when it does not have it (yet). */
async function history(demo: DemoRunner, on: ClusterProcess, workflowId: string): Promise<Event[] | undefined> {
  const args = ["--address", on.address, "workflow", "show", "-n", NS, "-w", workflowId];
  const r = await demo.ternJson<{ events: Event[] }>(args).catch((e: Error) => {
    throw new DemoError(`${on.name}: ${e.message}`);
  });
  return r?.events;
}

/** True when both clusters hold the same events for every workflow; otherwise what differs. */
async function sameHistories(demo: DemoRunner, a: ClusterProcess, b: ClusterProcess, ids: string[]): Promise<true | string> {
  for (const id of ids) {
    const [onA, onB] = await Promise.all([history(demo, a, id), history(demo, b, id)]);
    if (!onA) return `${a.name} has no ${id}`;
    if (!onB) return `${b.name} has no ${id} yet`;
    if (JSON.stringify(onA) !== JSON.stringify(onB)) return `${id}: ${onA.length} events on ${a.name}, ${onB.length} on ${b.name}`;
  }
  return true;
}

/** Waits until the cluster at `on` reports `active` as the namespace's active cluster. */
async function waitActive(demo: DemoRunner, on: ClusterProcess, active: string): Promise<void> {
  await demo.waitFor(`${on.name} to see ${NS} active in ${active}`, async () => {
    const r = await demo.ternJson<Namespace>(["--address", on.address, "operator", "namespace", "describe", NS]);
    const seen = r?.namespace.replicationConfig?.activeClusterName;
    return seen === active || `${on.name} says ${seen ?? "namespace unknown"}`;
  });
}

/** A first start makes its PGlite database: a few seconds on a quiet machine, over 30 s on a busy 2-core one. */
const START_TIMEOUT_MS = 120_000;

async function startClusters(demo: DemoRunner): Promise<[ClusterProcess, ClusterProcess]> {
  demo.step("Start two clusters");
  const dir = mkdtempSync(join(tmpdir(), "tern-demo-"));
  demo.own({ dir });
  demo.say(`Working dir ${dir} (PGlite data, generated configs and server logs; removed at the end).`);
  demo.say("clusterA: initialFailoverVersion 1; clusterB: 2; failoverVersionIncrement 100; enableGlobalNamespace: true;");
  demo.say("dcRedirectionPolicy: selected-apis-forwarding (writes to the standby are forwarded to the active cluster).");
  const start = (name: string, initialFailoverVersion: number) =>
    startClusterProcess({ name, initialFailoverVersion, dir, startTimeoutMs: START_TIMEOUT_MS }).then((c) => (demo.own({ cluster: c }), c));
  const [a, b] = await Promise.all([start("clusterA", 1), start("clusterB", 2)]);
  for (const c of [a, b]) demo.say(`${c.name} is up at ${c.address}: bun src/main.ts --config ${c.configPath}`);
  return [a, b];
}

async function connect(demo: DemoRunner, a: ClusterProcess, b: ClusterProcess): Promise<void> {
  demo.step("Connect the clusters both ways (tctl's spelling works as is)");
  await demo.tern(["-address", a.address, "admin", "cluster", "upsert-remote-cluster", "--frontend_address", b.address]);
  await demo.tern(["-address", b.address, "admin", "cluster", "upsert-remote-cluster", "--frontend_address", a.address]);
  const connected = async (on: ClusterProcess, remote: ClusterProcess): Promise<true | string> => {
    const r = await demo.ternJson<{ cluster: { connectionState?: string } }>(
      ["--address", on.address, "operator", "cluster", "describe", remote.name],
    );
    const state = r?.cluster.connectionState ?? "unknown";
    return state === "connected" || `${on.name} → ${remote.name}: ${state}`;
  };
  try {
    await demo.waitFor("both connections to be connected", async () => {
      const states = await Promise.all([connected(a, b), connected(b, a)]);
      return states.find((s) => s !== true) ?? true;
    }, { timeoutMs: 20_000 });
  } catch (e) {
    demo.say(`⚠ ${(e as Error).message}; going on (replication below shows whether the streams work)`);
  }
  await demo.tern(["--address", a.address, "operator", "cluster", "list"]);
}

async function createNamespace(demo: DemoRunner, a: ClusterProcess, b: ClusterProcess): Promise<void> {
  demo.step(`Create the global namespace ${NS} on clusterA`);
  await demo.tern(["--address", a.address, "operator", "namespace", "create", NS, "--global",
    "--cluster", a.name, "--cluster", b.name, "--active-cluster", a.name]);
  await waitActive(demo, b, a.name);
  await demo.tern(["--address", b.address, "operator", "namespace", "describe", NS]);
}

async function writeOnA(demo: DemoRunner, a: ClusterProcess, b: ClusterProcess): Promise<void> {
  demo.step("Start workflows and send signals on clusterA");
  for (const [i, id] of ORDERS.entries()) {
    await demo.tern(["--address", a.address, "workflow", "start", "-n", NS, "-w", id, "--type", "OrderFlow", "--input", `{"sku":"A${i + 1}"}`]);
  }
  await demo.tern(["--address", a.address, "workflow", "signal", "-n", NS, "-w", "order-1", "--name", "paid", "--input", '{"amount":42}']);
  demo.step("Watch clusterB catch up");
  await demo.waitFor("clusterB to hold the same histories as clusterA", () => sameHistories(demo, a, b, ORDERS));
  await demo.tern(["--address", b.address, "replication", "status"]);
  await demo.tern(["--address", b.address, "workflow", "list", "-n", NS]);
}

async function forwardSignal(demo: DemoRunner, a: ClusterProcess, b: ClusterProcess): Promise<void> {
  demo.step("Send a signal to clusterB: it is forwarded to the active clusterA");
  await demo.tern(["--address", b.address, "workflow", "signal", "-n", NS, "-w", "order-2", "--name", "shipped", "--input", '{"carrier":"ups"}']);
  const onA = await history(demo, a, "order-2");
  const forwarded = onA?.some((e) => e.workflowExecutionSignaledEventAttributes?.signalName === "shipped");
  if (!forwarded) throw new DemoError("clusterA has no 'shipped' signal on order-2: the signal was not forwarded");
  await demo.tern(["--address", a.address, "workflow", "show", "-n", NS, "-w", "order-2"]);
}

async function failover(demo: DemoRunner, a: ClusterProcess, b: ClusterProcess): Promise<void> {
  demo.step("Fail over gracefully to clusterB");
  await demo.tern(["--address", a.address, "operator", "namespace", "failover", "--namespace", NS, "--to", b.name]);
  await waitActive(demo, b, b.name);
  demo.step("Write on clusterB, now active");
  await demo.tern(["--address", b.address, "workflow", "signal", "-n", NS, "-w", "order-1", "--name", "refunded", "--input", '{"amount":42}']);
  await demo.tern(["--address", b.address, "workflow", "start", "-n", NS, "-w", "order-4", "--type", "OrderFlow", "--input", '{"sku":"B1"}']);
  await demo.waitFor("clusterA to receive clusterB's writes", () => sameHistories(demo, a, b, [...ORDERS, "order-4"]));
  demo.step("Fail back to clusterA with a forced failover");
  await demo.tern(["--address", a.address, "operator", "namespace", "update", "-n", NS, "--active-cluster", a.name]);
  await waitActive(demo, b, a.name);
  await demo.tern(["--address", a.address, "workflow", "signal", "-n", NS, "-w", "order-1", "--name", "closed"]);
  await demo.tern(["--address", a.address, "operator", "namespace", "describe", NS]);
}

async function compare(demo: DemoRunner, a: ClusterProcess, b: ClusterProcess): Promise<void> {
  demo.step("Compare the final history of order-1 on both clusters");
  await demo.waitFor("clusterB to receive the last write", () => sameHistories(demo, a, b, [...ORDERS, "order-4"]));
  for (const c of [a, b]) await demo.tern(["--address", c.address, "workflow", "show", "-n", NS, "-w", "order-1"]);
  const verdict = await sameHistories(demo, a, b, ["order-1"]);
  if (verdict !== true) throw new DemoError(`the histories differ: ${verdict}`);
  demo.say("The histories of order-1 on clusterA and clusterB are identical (event ids, versions, times, payloads).");
}

/** The tour after the clusters are up, in order; each phase prints its own step headers. */
const PHASES = [connect, createNamespace, writeOnA, forwardSignal, failover, compare];

/**
 * Runs the tour; stops at the first failed step, or with --keep-going runs every phase
 * and lists the failures at the end (for developers checking which parts work).
 */
async function main(argv: string[]): Promise<number> {
  const keepGoing = argv.includes("--keep-going");
  const demo = createDemoRunner();
  const interrupted = () => {
    demo.say("\nInterrupted: stopping the clusters and removing the working dir.");
    void demo.cleanUp().then(() => process.exit(130));
  };
  process.once("SIGINT", interrupted);
  process.once("SIGTERM", interrupted);
  const failures: string[] = [];
  let clusters: ClusterProcess[] = [];
  const fail = async (e: unknown) => {
    const line = `step "${demo.currentStep()}" failed: ${(e as Error).message}`;
    failures.push(line);
    demo.say(`\n✗ ${line}`);
    for (const c of clusters) {
      demo.say(`--- ${c.name}: ${await healthOf(c.address)}; last warnings in ${c.logPath}:\n${c.tail(6, true) || "(none)"}`);
    }
  };
  try {
    const [a, b] = await startClusters(demo);
    clusters = [a, b];
    for (const phase of PHASES) {
      try {
        await phase(demo, a, b);
      } catch (e) {
        await fail(e);
        if (!keepGoing) break;
      }
    }
  } catch (e) {
    await fail(e);
  } finally {
    demo.say("\nStopping the clusters and removing the working dir.");
    await demo.cleanUp();
  }
  if (failures.length === 0) {
    demo.say("Done: replication, forwarding and both kinds of failover worked.");
    return 0;
  }
  demo.say(`\n${failures.length} step(s) failed:\n${failures.map((f) => `  ✗ ${f}`).join("\n")}`);
  return 1;
}

process.exit(await main(process.argv.slice(2)));
