import { setDefaultTimeout, afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { listenGrpc } from "../../src/frontend/grpc-server";
import { Health, HealthCheckResponse_ServingStatus } from "../../src/gen/grpc/health/v1/health_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { startProxiedCluster } from "../support/proxied-cluster";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import type { TcpProxy } from "../support/tcp-proxy";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const START = { namespace: "frozen", workflowId: "w", workflowType: "t", taskQueue: "q" };

/**
 * StartWorkflowExecution as a Connect JSON POST with the deadline header alone: a client's own
 * timer (timeoutMs) would end the call on its side whatever the server does.
 */
const startWithDeadline = (url: string, requestId: string, deadlineMs: number) =>
  fetch(`${url}/tern.workflow.v1.WorkflowService/StartWorkflowExecution`, {
    method: "POST",
    headers: { "content-type": "application/json", "connect-protocol-version": "1", "connect-timeout-ms": String(deadlineMs) },
    body: JSON.stringify({ ...START, requestId }),
  }).then(async (res) => ({ status: res.status, body: await res.json() }));

/** The code a call failed with, or "ok". */
const outcome = (p: Promise<unknown>) => p.then(() => "ok", (e) => Code[ConnectError.from(e).code]);

/** Resolves with what p resolves to and how long it took, ms. */
async function timed<T>(p: Promise<T>): Promise<{ value: T; ms: number }> {
  const started = performance.now();
  const value = await p;
  return { value, ms: performance.now() - started };
}

// A frozen PostgreSQL (SIGSTOP on its processes, or a network that holds every byte) answers
// nothing and closes nothing: here a proxy between the server and its database holds the bytes.
if ((await testStores()).includes("postgres")) {
  describe("a server whose PostgreSQL froze", () => {
    let proxy: TcpProxy;
    let cluster: TestCluster;
    let close: () => Promise<void>;
    beforeAll(async () => {
      ({ cluster, proxy, close } = await startProxiedCluster());
    });
    afterEach(() => proxy.hold(false));
    afterAll(() => close?.());

    const health = () => fetch(`${cluster.url}/health`).then(async (res) => ({ status: res.status, body: await res.json() }));

    test("HealthAnswersNotServingWhileFrozenAndServingAfter", async () => {
      expect(await health()).toEqual({ status: 200, body: { status: "SERVING" } });
      proxy.hold(true);
      // A checker polling faster than the database answers: each answer within the probe's bound.
      for (let i = 0; i < 3; i++) {
        const [http, grpc] = await Promise.all([timed(health()), timed(cluster.client(Health).check({}))]);
        expect(http.value).toEqual({ status: 503, body: { status: "NOT_SERVING" } });
        expect(grpc.value.status).toBe(HealthCheckResponse_ServingStatus.NOT_SERVING);
        expect(Math.max(http.ms, grpc.ms)).toBeLessThan(3_000);
      }
      proxy.hold(false);
      await eventually(async () => expect(await health()).toEqual({ status: 200, body: { status: "SERVING" } }), { timeout: 5_000 });
      expect((await cluster.client(Health).check({})).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    });

    // The write may commit after the deadline's answer went out: the client retries with the
    // same request id and gets the one run.
    test("AUnaryCallPastItsConnectDeadlineAnswersDeadlineExceededAndItsRetryStartsOneRun", async () => {
      const wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: START.namespace });
      proxy.hold(true);
      const { value, ms } = await timed(startWithDeadline(cluster.url, "r1", 1_000));
      expect(value).toMatchObject({ status: 504, body: { code: "deadline_exceeded" } });
      expect(ms).toBeLessThan(2_000);
      proxy.hold(false);
      const runId = await eventually(async () => (await wf.startWorkflowExecution({ ...START, requestId: "r1" })).runId, { timeout: 10_000 });
      const described = await wf.describeWorkflowExecution({ namespace: START.namespace, execution: { workflowId: START.workflowId } });
      expect(described.workflowExecutionInfo?.execution?.runId).toBe(runId);
    });

    test("AUnaryCallPastItsGrpcTimeoutAnswersDeadlineExceeded", async () => {
      const { routes, interceptors, refuseUnserved } = cluster.server;
      const grpc = await listenGrpc({ routes, interceptors, refuseUnserved, host: "127.0.0.1", port: 0, readMaxBytes: 1 << 20 });
      try {
        const wf = createClient(WorkflowService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${grpc.port}` }));
        await wf.describeNamespace({ namespace: START.namespace });
        proxy.hold(true);
        // grpc-timeout by hand: the server's answer, not the client's own timer.
        const { value, ms } = await timed(outcome(wf.describeWorkflowExecution(
          { namespace: START.namespace, execution: { workflowId: "absent" } },
          { headers: { "grpc-timeout": "1000m" } },
        )));
        expect(value).toBe("DeadlineExceeded");
        expect(ms).toBeLessThan(2_000);
      } finally {
        proxy.hold(false);
        await grpc.close(0);
      }
    });
  });
}
