/**
 * A history long poll whose grpc-timeout comes before its wait, on tern's native gRPC port (the
 * listener boot.ts binds, with the server's routes and interceptors): answered with the empty page
 * Temporal answers at a long poll's deadline, by the active cluster and by a passive one whose
 * forwarded call the active cluster never answers (its link black-holed).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { listenGrpc } from "../../src/frontend/grpc-server";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { startLinkedPair } from "../support/linked-pair";
import type { TestCluster } from "../support/server";
import type { TcpProxy } from "../support/tcp-proxy";
import { answeredWithin, serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const run = { workflowId: "w1", runId: "" };
/** The poll's deadline: grpc-timeout by hand, so that the answer is the server's, not a timer of the client's. */
const DEADLINE_MS = 1_500;

// Forwarding and the deadline are the frontend's, whatever the store: PGlite alone.
describe("a history long poll on the gRPC port whose deadline comes first", () => {
  let a: TestCluster, b: TestCluster, link: TcpProxy, close: () => Promise<void>;
  const grpcPorts: Awaited<ReturnType<typeof listenGrpc>>[] = [];
  /** x's native gRPC port, as boot.ts binds it: the server's routes and interceptors on an h2c listener. */
  async function grpcOf(x: TestCluster) {
    const { routes, interceptors, refuseUnserved } = x.server;
    const port = await listenGrpc({ routes, interceptors, refuseUnserved, host: "127.0.0.1", port: 0, readMaxBytes: 1 << 20 });
    grpcPorts.push(port);
    return createClient(WorkflowService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port.port}` }));
  }
  beforeAll(async () => {
    ({ a, b, link, close } = await startLinkedPair("pglite", [{}, { extraYaml: "dcRedirectionPolicy: { policy: all-apis-forwarding }" }]));
    await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w1", workflowType: "t", taskQueue: "q" });
  });
  afterAll(async () => {
    link?.hold(false);
    await Promise.all(grpcPorts.map((p) => p.close(0)));
    await close?.();
  });

  /** w1's long poll from token with a 20 s wait on workflow, its grpc-timeout DEADLINE_MS: the page, or the code it failed with, and when. */
  async function poll(workflow: Awaited<ReturnType<typeof grpcOf>>, token: Uint8Array) {
    const started = performance.now();
    const answer = await workflow
      .getWorkflowExecutionHistory(
        { namespace: "orders", execution: run, waitNewEvent: true, waitTimeout: { seconds: 20n }, nextPageToken: token },
        { headers: { "grpc-timeout": `${DEADLINE_MS}m` } },
      )
      .then((page) => ({ events: page.history?.events ?? [], nextPageToken: page.nextPageToken }), (e: unknown) => ({ code: Code[ConnectError.from(e).code] }));
    return { answer, ms: performance.now() - started };
  }

  test("TestAHistoryLongPollOnTheGrpcPortWhoseDeadlineComesFirstAnswersAnEmptyPageWithItsToken, on the active cluster and forwarded to one that never answers", async () => {
    const { nextPageToken } = await a.client(WorkflowService).getWorkflowExecutionHistory({ namespace: "orders", execution: run, waitNewEvent: true, maximumPageSize: 1000 });
    const [onA, onB] = [await grpcOf(a), await grpcOf(b)];
    const local = await poll(onA, nextPageToken);
    expect(local.answer).toEqual({ events: [], nextPageToken });
    expect(local.ms).toBeLessThan(answeredWithin(DEADLINE_MS));
    // A takes B's connections and never answers: B's forwarded poll gets nothing back.
    link.hold(true);
    try {
      const forwarded = await poll(onB, nextPageToken);
      expect(forwarded.answer).toEqual({ events: [], nextPageToken });
      expect(forwarded.ms).toBeLessThan(answeredWithin(DEADLINE_MS));
    } finally {
      link.hold(false);
    }
  });
});
