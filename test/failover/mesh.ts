import { beforeAll, expect } from "bun:test";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { createGate } from "../support/gate";
import { startTestCluster, type TestCluster, type TestClusterOptions } from "../support/server";
import type { StoreKind } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

/** "host:port" of a test cluster's frontend. */
export const addr = (x: TestCluster) => x.url.replace("http://", "");

/** Starts clusterA (initial 1), clusterB (2), clusterC (3)... on store, each with its options. */
export async function startClusters<N extends Partial<TestClusterOptions>[]>(store: StoreKind, options: [...N]): Promise<{ [K in keyof N]: TestCluster }> {
  const started = await Promise.all(options.map((o, i) => startTestCluster(nthCluster(store, o, i))));
  return started as { [K in keyof N]: TestCluster };
}

const nthCluster = (store: StoreKind, o: Partial<TestClusterOptions>, i: number): TestClusterOptions => ({ store, name: `cluster${"ABCDEFG"[i]}`, initialFailoverVersion: i + 1, ...o });

/**
 * As startClusters, one after another, each in a beforeAll hook of its own (serverStartTimeout
 * each); call it in a describe. The returned list fills as the hooks run (destroy what it holds).
 * Four PGlite clusters started at once in one hook passed its 120 s on a loaded 2-core host
 * (forwarding.test.ts, 3 of 3 runs at load ~26), 2026-12-07.
 */
export function startClustersInTurn(store: StoreKind, options: Partial<TestClusterOptions>[]): TestCluster[] {
  const started: TestCluster[] = [];
  options.forEach((o, i) => beforeAll(async () => void started.push(await startTestCluster(nthCluster(store, o, i))), serverStartTimeout));
  return started;
}

/** Connects every pair both ways (what `cluster upsert` does on each side). */
export async function connectAll(clusters: TestCluster[]): Promise<void> {
  for (const x of clusters) {
    for (const y of clusters) if (x !== y) await x.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(y) });
  }
}

/** The namespace as cluster x describes it. */
export async function describeOn(x: TestCluster, namespace: string) {
  return (await x.client(WorkflowService).describeNamespace({ namespace })).namespace!;
}

/** Waits until x describes namespace and check passes on it. */
export function eventuallyOn(x: TestCluster, namespace: string, check: (ns: Awaited<ReturnType<typeof describeOn>>) => void, timeout = 10_000) {
  return eventually(async () => {
    const ns = await describeOn(x, namespace);
    check(ns);
    return ns;
  }, { timeout });
}

/** Expects the namespace's active cluster and failover version on x to become these. */
export function expectActiveOn(x: TestCluster, namespace: string, active: string, version: bigint) {
  return eventuallyOn(x, namespace, (ns) => {
    expect(ns.replicationConfig!.activeClusterName).toBe(active);
    expect(ns.failoverVersion).toBe(version);
  });
}

/**
 * A gate on a cluster's acks to its sources: closed, it goes on applying but tells no source of
 * it, as a cluster that stopped pulling (a graceful failover towards it waits) while its
 * connections stay enabled. Start the cluster with `options`; tests close and open `gate`.
 */
export function ackGate() {
  const gate = createGate();
  const options: Partial<TestClusterOptions> = { serverOptions: { replication: { durable: () => gate.held ?? Promise.resolve() } } };
  return { gate, options };
}

/** clusterA and clusterB on store, connected, with global namespace "orders" (active in A) known to both. */
export async function startOrdersPair(store: StoreKind, options: [Partial<TestClusterOptions>, Partial<TestClusterOptions>] = [{}, {}]): Promise<[TestCluster, TestCluster]> {
  const [a, b] = await startClusters(store, options);
  await connectAll([a, b]);
  await a.client(WorkflowService).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
  await eventuallyOn(b, "orders", () => {});
  return [a, b];
}
