import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { clusterMetadata } from "../../src/persistence/schema";
import { eventually } from "../support/eventually";
import { startTestCluster, type TestCluster } from "../support/server";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

describe("a forced failover to a target that never answers, its call cancelled", () => {
  let c: TestCluster;
  /** The silent target: it takes connections and never answers (on a port the system picks). */
  let silent: Server;
  let silentPort: number;
  const open = new Set<Socket>();

  beforeAll(async () => {
    silent = createServer((s) => {
      open.add(s);
      s.on("close", () => open.delete(s));
      s.on("error", () => {});
    });
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    silentPort = (silent.address() as AddressInfo).port;
    c = await startTestCluster({ store: "pglite", name: "clusterC", initialFailoverVersion: 3 });
    const db = c.server.database.db;
    const [self] = await db.select().from(clusterMetadata);
    // Disabled: no stream of this cluster's connects to it, only the failover's asks.
    await db.insert(clusterMetadata).values({ ...self!, clusterName: "clusterZ", clusterId: "z", isCurrent: false, initialFailoverVersion: 9, rpcAddress: `127.0.0.1:${silentPort}`, enableConnection: false });
    await c.client(WorkflowService).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterC", "clusterZ"], activeClusterName: "clusterC" });
  });
  afterAll(async () => {
    for (const s of open) s.destroy();
    await c.destroy();
    await new Promise((resolve) => silent.close(resolve));
  });

  test("TestForcedFailoverCancelledEndsItsAskOfTheTarget: the ask's connections close with the call, and the namespace stays where it was", async () => {
    const abort = new AbortController();
    const call = c.client(WorkflowService).updateNamespace({ namespace: "orders", activeClusterName: "clusterZ" }, { signal: abort.signal }).catch((e: Error) => e);
    // Its describe-cluster and backfill-status asks are waiting on the target.
    await eventually(() => expect(open.size).toBe(2));
    abort.abort();
    expect(await call).toBeInstanceOf(Error);
    // Before: they were held for the asks' own wait (2 s), the call long over.
    await eventually(() => expect(open.size).toBe(0), { timeout: 1_000 });
    const ns = await c.client(WorkflowService).describeNamespace({ namespace: "orders" });
    expect([ns.namespace?.replicationConfig?.activeClusterName, ns.namespace?.failoverVersion]).toEqual(["clusterC", 3n]);
  });
});
