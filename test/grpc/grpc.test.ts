/**
 * Native gRPC (h2c) against a real `bun src/main.ts` process: connect-node's gRPC
 * transport and `buf curl` as an independent client, on a separate gRPC port and on
 * the port shared with HTTP/1.1.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createConnectTransport } from "@connectrpc/connect-web";
import { join } from "node:path";
import { Health, HealthCheckResponse_ServingStatus } from "../../src/gen/grpc/health/v1/health_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { lockReleased, repoRoot, startServerProcess, type ServerProcess } from "../runtime/server-process";
import { frame, rawGrpcCall } from "../support/raw-grpc";
import { serverStartTimeout } from "../support/timeouts";

const bunMain = [process.execPath, "src/main.ts"];

/** `buf curl` over gRPC with prior knowledge (h2c); resolves to its exit code and output. */
async function bufCurl(url: string, body: object): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = Bun.spawn(
    [join(repoRoot, "node_modules/.bin/buf"), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
      "--schema", "proto", "-d", JSON.stringify(body), url],
    { cwd: repoRoot, stdout: "pipe", stderr: "pipe" },
  );
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { code, stdout, stderr };
}

/** Health/Check and a WorkflowService round trip, over connect-node's gRPC transport and buf curl. */
async function proveNativeGrpc(grpcUrl: string, namespace: string): Promise<void> {
  const transport = createGrpcTransport({ baseUrl: grpcUrl });
  expect((await createClient(Health, transport).check({})).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
  const workflow = createClient(WorkflowService, transport);
  await workflow.registerNamespace({ namespace });
  const { runId } = await workflow.startWorkflowExecution({ namespace, workflowId: "wf", workflowType: "t", taskQueue: "q", requestId: "r" });
  const described = await workflow.describeWorkflowExecution({ namespace, execution: { workflowId: "wf", runId } });
  expect(described.workflowExecutionInfo?.execution?.runId).toBe(runId);
  // Domain errors keep their code over gRPC trailers.
  const missing = await workflow.describeNamespace({ namespace: "no-such-namespace" }).catch((e) => e);
  expect(ConnectError.from(missing).code).toBe(Code.NotFound);

  const health = await bufCurl(`${grpcUrl}/grpc.health.v1.Health/Check`, {});
  expect(health).toMatchObject({ code: 0 });
  expect(JSON.parse(health.stdout)).toEqual({ status: "SERVING" });
  const ns = await bufCurl(`${grpcUrl}/tern.workflow.v1.WorkflowService/DescribeNamespace`, { namespace });
  expect(ns.code).toBe(0);
  expect(JSON.parse(ns.stdout).namespace.namespaceInfo.name).toBe(namespace);
  const notFound = await bufCurl(`${grpcUrl}/tern.workflow.v1.WorkflowService/DescribeNamespace`, { namespace: "no-such-namespace" });
  expect(notFound.code).not.toBe(0);
  expect(notFound.stderr).toContain("not_found");
}

describe("bun src/main.ts with a separate gRPC port", () => {
  let server: ServerProcess;
  beforeAll(async () => {
    server = await startServerProcess(bunMain);
  }, serverStartTimeout);
  afterAll(() => server?.destroy());

  test("serves Health/Check and WorkflowService over h2c on grpcPort", async () => {
    expect(server.grpcUrl).toBeDefined();
    expect(server.grpcUrl).not.toBe(server.httpUrl);
    await proveNativeGrpc(server.grpcUrl!, "grpc-separate");
  }, 30_000);

  test("stops on SIGTERM: exit 0, listeners closed, data dir lock released", async () => {
    expect(await server.stop("SIGTERM")).toBe(0);
    expect(lockReleased(server.dataDir)).toBe(true);
    expect(await fetch(`${server.httpUrl}/health`).then(() => "open", () => "refused")).toBe("refused");
  });
});

describe("bun src/main.ts with gRPC sharing the HTTP/1.1 port (grpcPort = port)", () => {
  let server: ServerProcess;
  beforeAll(async () => {
    server = await startServerProcess(bunMain, { sharedPort: true });
  }, serverStartTimeout);
  afterAll(() => server?.destroy());

  test("serves native gRPC and Connect over HTTP/1.1 on one port", async () => {
    expect(server.grpcUrl).toBe(server.httpUrl);
    await proveNativeGrpc(server.grpcUrl!, "grpc-shared");
    const http1 = createClient(WorkflowService, createConnectTransport({ baseUrl: server.httpUrl }));
    const ns = await http1.describeNamespace({ namespace: "grpc-shared" });
    expect(ns.namespace?.namespaceInfo?.name).toBe("grpc-shared");
    expect((await fetch(`${server.httpUrl}/health`)).status).toBe(200);
  }, 30_000);

  test("a procedure this build does not serve: HTTP 404 with a request id, counted, on either protocol of the port", async () => {
    const unknown = "/tern.workflow.v1.WorkflowService/NotYetInvented";
    const grpc = await rawGrpcCall(server.grpcUrl!, unknown, frame(new Uint8Array()), { "x-request-id": "shared-grpc-1" });
    expect([grpc.headers[":status"], grpc.headers["x-request-id"]]).toEqual([404, "shared-grpc-1"]);
    const http1 = await fetch(`${server.httpUrl}${unknown}`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    expect([http1.status, ((await http1.json()) as { code: string }).code]).toEqual([404, "unimplemented"]);
    expect(http1.headers.get("x-request-id")).toMatch(/^[0-9A-Z]{26}$/);
    expect(await (await fetch(`${server.httpUrl}/metrics`)).text()).toContain(`service_errors{operation="_unknown_",namespace="",code="Unimplemented"} 2\n`);
  });

  test("stops on SIGINT: exit 0 and data dir lock released", async () => {
    expect(await server.stop("SIGINT")).toBe(0);
    expect(lockReleased(server.dataDir)).toBe(true);
  });
});
