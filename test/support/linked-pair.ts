import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { addr, startClusters } from "../failover/mesh";
import { globalNamespace } from "../replication/support";
import type { TestCluster, TestClusterOptions } from "./server";
import type { StoreKind } from "./stores";
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
  // A knows B first, then the namespace, then B knows A: B's streams start with the namespace in place.
  await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
  const nsId = await globalNamespace(a, b, namespace);
  await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: `127.0.0.1:${link.port}` });
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
