import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { addr, startClusters } from "../failover/mesh";
import { globalNamespace } from "../replication/support";
import type { TestCluster, TestClusterOptions } from "./server";
import type { StoreKind } from "./stores";
import { startHttpProxy, type HttpProxy } from "./http-proxy";
import { startTcpProxy, type TcpProxy } from "./tcp-proxy";

/**
 * clusterA and clusterB on store, connected both ways, B reaching A through a TCP proxy the test
 * controls (the network between them: hold, stall, cut), with the global namespace `namespace`
 * active in A and known to both. close() lets the link go and removes both clusters.
 */
export async function startLinkedPair(
  store: StoreKind,
  options: [Partial<TestClusterOptions>, Partial<TestClusterOptions>],
  namespace = "orders",
): Promise<{ a: TestCluster; b: TestCluster; link: TcpProxy; nsId: string; close(): Promise<void> }> {
  const [a, b] = await startClusters(store, options);
  const [host, port] = addr(a).split(":");
  const link = await startTcpProxy({ host: host!, port: Number(port) });
  const nsId = await connectThrough(a, b, link.port, namespace);
  return {
    a, b, link, nsId,
    async close() {
      link.hold(false);
      link.stall("toServer", false);
      link.stall("toClient", false);
      await Promise.all([a.destroy(), b.destroy()]);
      await link.close();
    },
  };
}

/** As startLinkedPair, but B reaches A through an HTTP proxy that can fail chosen paths (one endpoint of A down for B). */
export async function startHttpLinkedPair(
  store: StoreKind,
  options: [Partial<TestClusterOptions>, Partial<TestClusterOptions>],
  namespace = "orders",
): Promise<{ a: TestCluster; b: TestCluster; link: HttpProxy; nsId: string; close(): Promise<void> }> {
  const [a, b] = await startClusters(store, options);
  const link = startHttpProxy(addr(a));
  const nsId = await connectThrough(a, b, link.port, namespace);
  return {
    a, b, link, nsId,
    async close() {
      link.failPaths(undefined);
      await Promise.all([a.destroy(), b.destroy()]);
      await link.close();
    },
  };
}

/** A knows B first, then the namespace, then B knows A at the proxy's port: B's streams start with the namespace in place. */
async function connectThrough(a: TestCluster, b: TestCluster, linkPort: number, namespace: string): Promise<string> {
  await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
  const nsId = await globalNamespace(a, b, namespace);
  await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: `127.0.0.1:${linkPort}` });
  return nsId;
}
