import { createTestDatabase } from "./postgres";
import { startTestCluster, type TestCluster, type TestClusterOptions } from "./server";
import { startTcpProxyFor, type TcpProxy } from "./tcp-proxy";

/** A server on a fresh PostgreSQL database reached through a TCP proxy the test controls (refuse, cut, hold). */
export async function startProxiedCluster(o: Omit<Partial<TestClusterOptions>, "store" | "dataLocation"> = {}): Promise<{ cluster: TestCluster; proxy: TcpProxy; close(): Promise<void> }> {
  const database = await createTestDatabase();
  const { proxy, url } = await startTcpProxyFor(database.url);
  const cluster = await startTestCluster({ ...o, store: "postgres", dataLocation: url });
  return {
    cluster,
    proxy,
    async close() {
      proxy.hold(false);
      await cluster.destroy();
      await proxy.close();
      await database.drop();
    },
  };
}
