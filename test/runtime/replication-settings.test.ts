/**
 * The config's replication block reaches the server a process starts from its YAML file: not
 * only parsed (test/unit/config.test.ts), but the timing the server runs on.
 */
import { afterAll, expect, setDefaultTimeout, test } from "bun:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { eventually } from "../support/eventually";
import { startTestCluster, type TestCluster } from "../support/server";
import { serverStartTimeout } from "../support/timeouts";
import { startServerProcess, type ServerProcess } from "./server-process";

setDefaultTimeout(serverStartTimeout);

let a: ServerProcess | undefined;
let b: TestCluster | undefined;
afterAll(async () => {
  await a?.destroy();
  await b?.destroy();
});

test("TestReplicationCleanupIntervalFromTheConfigFile: replication.cleanupIntervalMs 300 sets the outbound backlog within a second of a connect, not at the default 10 s pass", async () => {
  // B first: A connects as soon as it serves, long before its first pass at the default 10 s.
  b = await startTestCluster({ store: "pglite", name: "clusterB", initialFailoverVersion: 2 });
  a = await startServerProcess([process.execPath, "src/main.ts"], { extraYaml: "replication: { cleanupIntervalMs: 300 }" });
  const operator = createClient(OperatorService, createConnectTransport({ baseUrl: a.httpUrl }));
  await operator.addOrUpdateRemoteCluster({ frontendAddress: b.url.replace("http://", "") });
  const connected = performance.now();
  // Each cleanup pass sets replication_outbound_tasks_lag for every remote and shard (replication/cleanup.ts).
  await eventually(async () => {
    const text = await (await fetch(`${a!.httpUrl}/metrics`)).text();
    expect(text).toMatch(/^replication_outbound_tasks_lag\{[^}]*remote_cluster="clusterB"[^}]*\} 0$/m);
  }, { timeout: 15_000, interval: 50 });
  // The default pass, 10 s after A's start, would come 9 s or more after the connect.
  expect(performance.now() - connected).toBeLessThan(4_000);
});
