import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code, ConnectError, createHandlerContext } from "@connectrpc/connect";
import { create, toBinary } from "@bufbuild/protobuf";
import { errorToJson } from "@connectrpc/connect/protocol-connect";
import { createRemoteClientPool } from "../../src/cluster/remote-client";
import { createCallFailures } from "../../src/frontend/call-failures";
import { forward } from "../../src/frontend/forwarding";
import { requestIdKey } from "../../src/frontend/interceptors";
import { createRedirectionOutcomes } from "../../src/frontend/redirection-outcomes";
import { WorkflowExecutionAlreadyStartedFailureSchema } from "../../src/gen/tern/errordetails/v1/message_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { createMetrics } from "../../src/observability/metrics";

/** A stand-in for the active cluster's address, answering every call with answer. */
const serving = (answer: () => Response) => Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: answer });

/** A forwarded signal to the server at address, failed as the forwarding cluster's caller gets it, with the lines it logged. */
async function forwardedFailure(address: string): Promise<{ err: ConnectError; lines: { level: string; msg: string; error?: string }[] }> {
  const lines: { level: string; msg: string; error?: string }[] = [];
  const failures = createCallFailures({ metrics: createMetrics(), log: createLogger({ write: (l) => void lines.push(JSON.parse(l)) }) });
  const method = WorkflowService.method.signalWorkflowExecution;
  const ctx = createHandlerContext({ service: WorkflowService, method, protocolName: "connect", requestMethod: "POST", url: "http://127.0.0.1/" });
  ctx.values.set(requestIdKey, "fwd-1");
  const { workflow } = createRemoteClientPool().get(address);
  const to = { current: "clusterB", target: "clusterA", namespace: "orders", what: "SignalWorkflowExecution", limitMs: 5_000, requestId: "sig-1" };
  const e = await forward(ctx, to, (options) => workflow.signalWorkflowExecution({ namespace: "orders" }, options)).then(() => undefined, (e: unknown) => e);
  const err = failures.failed(e, "fwd-1", { operation: "SignalWorkflowExecution", namespace: "orders" });
  return { err, lines };
}

/** A detail of an error answer: its type name and its bytes, base64 as Connect's JSON writes them (no padding). */
const detail = {
  type: WorkflowExecutionAlreadyStartedFailureSchema.typeName,
  value: Buffer.from(toBinary(WorkflowExecutionAlreadyStartedFailureSchema, create(WorkflowExecutionAlreadyStartedFailureSchema, { runId: "run-9" }))).toString("base64").replace(/=+$/, ""),
};

describe("a forwarded call's failure answered by the active cluster's address", () => {
  let internal: ReturnType<typeof serving>, detailed: ReturnType<typeof serving>, proxy: ReturnType<typeof serving>, proxy400: ReturnType<typeof serving>;
  let gateway: ReturnType<typeof serving>, webPage: ReturnType<typeof serving>;
  beforeAll(() => {
    // The active cluster's own INTERNAL answer, as a tern sends it (Connect's JSON error, HTTP 500).
    internal = serving(() => Response.json({ code: "internal", message: "internal error (request id act-7)" }, { status: 500 }));
    // One with a detail, as a Temporal failure's: the type name and the message's bytes, base64.
    detailed = serving(() => Response.json({
      code: "internal",
      message: "internal error (request id act-8)",
      details: [detail],
    }, { status: 500 }));
    // A proxy in front of the active cluster, answering its own page.
    proxy = serving(() => new Response(`<html><body><h1>500 Internal Server Error</h1>${" padding".repeat(40)}</body></html>`, { status: 500, headers: { "content-type": "text/html" } }));
    // One refusing the request itself (nginx's "Request Header Or Cookie Too Large"): connect reads a bare 400 as INTERNAL.
    proxy400 = serving(() => new Response("<html><body><h1>400 Bad Request</h1></body></html>", { status: 400, headers: { "content-type": "text/html" } }));
    // One whose upstream is down, and a web server at the address instead of a tern.
    gateway = serving(() => new Response("<html><body><h1>502 Bad Gateway</h1></body></html>", { status: 502, headers: { "content-type": "text/html" } }));
    webPage = serving(() => new Response("<html><body><h1>Welcome to nginx!</h1></body></html>", { headers: { "content-type": "text/html" } }));
  });
  afterAll(() => {
    internal.stop(true);
    detailed.stop(true);
    proxy.stop(true);
    proxy400.stop(true);
    gateway.stop(true);
    webPage.stop(true);
  });

  test("TestForwardedInternalErrorIsPassedOnAndNotLoggedAsThisClustersFailure", async () => {
    const { err, lines } = await forwardedFailure(internal.url.host);
    expect([err.code, err.rawMessage]).toEqual([Code.Internal, "internal error (request id act-7)"]);
    // Logged as other forwarded failures are: one info line, no stack; the active cluster logged the fault.
    expect(lines.map(({ level, msg, error }) => ({ level, msg, error }))).toEqual([
      { level: "info", msg: "rpc failed", error: "internal error (request id act-7)" },
    ]);
  });

  test("TestForwardedInternalErrorKeepsItsDetails", async () => {
    const { err } = await forwardedFailure(detailed.url.host);
    expect([err.code, err.rawMessage]).toEqual([Code.Internal, "internal error (request id act-8)"]);
    // Before, the detail was dropped: the caller's answer had none.
    expect(err.findDetails(WorkflowExecutionAlreadyStartedFailureSchema).map((d) => d.runId)).toEqual(["run-9"]);
    // And it goes on the wire as it came.
    expect(errorToJson(err, undefined).details).toEqual([detail]);
  });

  test("TestForwardedCallAnsweredByAProxysBareHttp500SaysWhatItAnswered", async () => {
    const { err } = await forwardedFailure(proxy.url.host);
    expect(err.code).toBe(Code.Unavailable);
    // Reached, and answered: its status and the start of its page, not "cannot reach cluster clusterA".
    expect(err.rawMessage).toBe(
      `cluster clusterA answered, but not as a tern frontend: HTTP 500 "<html><body><h1>500 Internal Server Error</h1>${" padding".repeat(9)} p..."` +
        " (request id sig-1); retry with the same request id",
    );
  });

  test("TestForwardedCallAnsweredByAProxysBareHttp400IsNotPassedOnAsTheActiveClustersInternalError", async () => {
    const { err, lines } = await forwardedFailure(proxy400.url.host);
    // It was the proxy's answer, not the active cluster's logged failure (no request id of its to look up).
    expect([err.code, err.rawMessage]).toEqual([
      Code.Unavailable,
      'cluster clusterA answered, but not as a tern frontend: HTTP 400 "<html><body><h1>400 Bad Request</h1></body></html>" (request id sig-1); retry with the same request id',
    ]);
    expect(lines.map(({ level, msg }) => ({ level, msg }))).toEqual([{ level: "info", msg: "rpc failed" }]);
  });

  test("TestForwardedCallAnsweredByAProxysBareHttp502IsPassedOnUnderItsOwnCode", async () => {
    const { err } = await forwardedFailure(gateway.url.host);
    expect([err.code, err.rawMessage]).toEqual([Code.Unavailable, "HTTP 502"]);
  });

  test("TestForwardedCallsAnsweredBySomethingInFrontOfTheActiveClusterAreCountedByWhatAnsweredNotAsUnreachable", async () => {
    const metrics = createMetrics();
    const lines: { msg: string; remote?: string; reason?: string }[] = [];
    const redirections = createRedirectionOutcomes({ metrics, log: createLogger({ write: (l) => void lines.push(JSON.parse(l)) }) });
    // A port nothing listens on: the connection refused.
    const closed = serving(() => new Response());
    const refusing = closed.url.host;
    closed.stop(true);
    for (const address of [internal.url.host, proxy.url.host, gateway.url.host, webPage.url.host, refusing]) {
      const { workflow } = createRemoteClientPool().get(address);
      await redirections.observed({ what: "SignalWorkflowExecution", namespace: "orders", target: address }, "fwd-1", workflow.signalWorkflowExecution({ namespace: "orders" })).catch(() => {});
    }
    const errorTypes = [...metrics.render().matchAll(/^client_redirection_errors\{.*target_cluster="([^"]+)",error_type="([^"]+)"\} 1$/gm)].map((m) => [m[1], m[2]]);
    expect(Object.fromEntries(errorTypes)).toEqual({
      [internal.url.host]: "internal",
      // Reached, and answered by a proxy or a web server: what Connect makes of it, not "unreachable".
      [proxy.url.host]: "unknown",
      [gateway.url.host]: "unavailable",
      [webPage.url.host]: "unknown",
      [refusing]: "unreachable",
    });
    // Only the call that got no answer is logged as such.
    expect(lines.map(({ msg, remote, reason }) => ({ msg, remote, reason }))).toEqual([
      { msg: "forwarded call failed: cannot reach the active cluster", remote: refusing, reason: "connection refused" },
    ]);
  });

  test("TestForwardedCallAnsweredByAWebPageSaysWhatItAnswered", async () => {
    const { err } = await forwardedFailure(webPage.url.host);
    // Before: "cannot reach cluster clusterA: unsupported content type text/html", though it answered.
    expect([err.code, err.rawMessage]).toEqual([
      Code.Unavailable,
      'cluster clusterA answered, but not as a tern frontend: HTTP 200 "<html><body><h1>Welcome to nginx!</h1></body></html>" (request id sig-1); retry with the same request id',
    ]);
  });
});
