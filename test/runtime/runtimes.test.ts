/**
 * The core is runtime-neutral: the bundles from scripts/build-runtimes.ts serve real
 * Connect and gRPC calls under Node and Deno, and stop cleanly on SIGTERM.
 */
import { afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, rmSync } from "node:fs";
import { Agent, get } from "node:http";
import { join } from "node:path";
import { createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createConnectTransport } from "@connectrpc/connect-web";
import { buildRuntimes } from "../../scripts/build-runtimes";
import { Health, HealthCheckResponse_ServingStatus } from "../../src/gen/grpc/health/v1/health_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { lockReleased, repoRoot, serverEntries, startServerProcess, type ServerProcess } from "./server-process";
import { serverStartTimeout } from "../support/timeouts";

const inCI = process.env.CI === "true";

/** The entry's grace for open requests after a stop signal (src/entry/boot.ts). */
const GRACE_MS = 5_000;

const [, node, deno] = serverEntries();
// Node serves gRPC on the HTTP port (grpcPort = port), Deno on its own port: both modes run off Bun.
const runtimes = [
  { ...node!, sharedPort: true },
  { ...deno!, sharedPort: false },
];

if (!deno!.present && !inCI) console.warn("\n!!! deno not installed (npm i): the Deno runtime test is SKIPPED !!!\n");

beforeAll(async () => {
  await buildRuntimes();
}, serverStartTimeout);

test("every runtime is installed (CI requires node and deno)", () => {
  const missing = runtimes.filter((r) => !r.present).map((r) => r.name);
  if (inCI) expect(missing).toEqual([]);
});

for (const runtime of runtimes) {
  describe(`runtime ${runtime.name}`, () => {
    let server: ServerProcess | undefined;
    afterEach(async () => {
      await server?.destroy();
      server = undefined;
    });

    const grpcOn = runtime.sharedPort ? "on the HTTP port" : "on grpcPort";
    test.skipIf(!runtime.present)(`serves Connect, and native gRPC ${grpcOn}; SIGTERM stops it well inside the grace with an HTTP/1.1 Watch open, and releases the data dir`, async () => {
      server = await startServerProcess(runtime.cmd, { sharedPort: runtime.sharedPort });
      await exerciseConnect(createConnectTransport({ baseUrl: server.httpUrl }));
      expect(server.grpcUrl).toBeDefined();
      expect(server.grpcUrl === server.httpUrl).toBe(runtime.sharedPort);
      const grpc = createGrpcTransport({ baseUrl: server.grpcUrl! });
      const health = await createClient(Health, grpc).check({});
      expect(health.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
      // A Watch over HTTP/1.1 the stop ends: its connection, kept alive, does not hold the stop for the grace.
      const watching = createClient(Health, createConnectTransport({ baseUrl: server.httpUrl })).watch({});
      expect((await watching[Symbol.asyncIterator]().next()).value?.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
      const t0 = performance.now();
      expect(await server.stop("SIGTERM")).toBe(0);
      expect(performance.now() - t0).toBeLessThan(GRACE_MS * 0.6);
      expect(server.output()).toContain(`"msg":"stopped"`);
      expect(lockReleased(server.dataDir)).toBe(true);
    }, serverStartTimeout);

    test.skipIf(!runtime.present)(`SIGTERM with a gRPC Watch open ${grpcOn} and an HTTP/1.1 connection kept alive from an answer just before: exits well inside the grace`, async () => {
      server = await startServerProcess(runtime.cmd, { sharedPort: runtime.sharedPort });
      const watching = createClient(Health, createGrpcTransport({ baseUrl: server.grpcUrl! })).watch({});
      expect((await watching[Symbol.asyncIterator]().next()).value?.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
      // Answered, then idle: the client keeps the connection for its next call.
      const agent = new Agent({ keepAlive: true });
      try {
        expect(await statusOf(`${server.httpUrl}/health`, agent)).toBe(200);
        const t0 = performance.now();
        expect(await server.stop("SIGTERM")).toBe(0);
        // Before, on Node's one port, the idle connection held the stop for its keep-alive timeout (5 s).
        expect(performance.now() - t0).toBeLessThan(GRACE_MS * 0.6);
      } finally {
        agent.destroy();
      }
    }, serverStartTimeout);
  });
}

/** The status of a GET of url through agent (node:http: the connection kept as the agent keeps it). */
function statusOf(url: string, agent: Agent): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = get(url, { agent }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode!));
    });
    req.on("error", reject);
  });
}

// Last in the file: it removes the bundles the tests above run.
test.skipIf(!node!.present)("npm run start:node builds the bundle first, so it never runs a stale or missing dist/", async () => {
  rmSync(join(repoRoot, "dist"), { recursive: true, force: true });
  const server = await startServerProcess(["npm", "run", "--silent", "start:node", "--"], { timeout: 60_000 });
  try {
    await exerciseConnect(createConnectTransport({ baseUrl: server.httpUrl }));
    expect(existsSync(join(repoRoot, "dist/node/tern.mjs"))).toBe(true);
    // SIGTERM to npm (as systemd or docker stop sends it) reaches the server: it stops cleanly.
    await server.stop("SIGTERM");
    await eventually(() => expect(server.output()).toContain(`"msg":"stopped"`), { timeout: 15_000 });
    expect(lockReleased(server.dataDir)).toBe(true);
  } finally {
    await server.destroy();
  }
}, 90_000);

/** DescribeCluster, RegisterNamespace, StartWorkflowExecution, DescribeWorkflowExecution. */
async function exerciseConnect(transport: Transport): Promise<void> {
  const operator = createClient(OperatorService, transport);
  const workflow = createClient(WorkflowService, transport);
  const { cluster } = await operator.describeCluster({});
  expect(cluster?.clusterName).toBe("active");
  expect(cluster?.historyShardCount).toBe(4);
  await workflow.registerNamespace({ namespace: "runtimes" });
  const started = await workflow.startWorkflowExecution({
    namespace: "runtimes", workflowId: "wf-1", workflowType: "demo", taskQueue: "q", requestId: "req-1",
  });
  expect(started.started).toBe(true);
  const described = await workflow.describeWorkflowExecution({
    namespace: "runtimes", execution: { workflowId: "wf-1", runId: started.runId },
  });
  expect(described.workflowExecutionInfo?.workflowType).toBe("demo");
}
