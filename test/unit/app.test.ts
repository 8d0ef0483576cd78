import { describe, expect, test } from "bun:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { createApp } from "../../src/frontend/app";
import { createCallFailures } from "../../src/frontend/call-failures";
import { createRefuseUnserved } from "../../src/frontend/refused-calls";
import { Health, HealthCheckRequestSchema, HealthCheckResponse_ServingStatus } from "../../src/gen/grpc/health/v1/health_pb";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { createMetrics } from "../../src/observability/metrics";

/** The app with a Health service that refuses service "bad" and says which service it was asked about in a header. */
function app(readMaxBytes = 1 << 20, { metrics = createMetrics(), log = createLogger({ write: () => {} }) } = {}) {
  return createApp({
    routes: (r) =>
      r.service(Health, {
        check(req, ctx) {
          if (req.service === "bad") throw new ConnectError("service bad is not known", Code.InvalidArgument);
          ctx.responseHeader.set("x-asked", req.service);
          return { status: HealthCheckResponse_ServingStatus.SERVING };
        },
        async *watch() {},
      }),
    interceptors: [],
    metrics,
    refuseUnserved: createRefuseUnserved({ metrics, failures: createCallFailures({ metrics, log }) }),
    isServing: async () => true,
    readMaxBytes,
  });
}

const URL_CHECK = "http://tern.test/grpc.health.v1.Health/Check";

/** A Connect unary POST with a declared length (read whole up front) or streamed without one. */
function post(body: Uint8Array<ArrayBuffer>, type: string, sized: boolean): Request {
  const headers: Record<string, string> = { "content-type": type, "connect-protocol-version": "1" };
  if (sized) return new Request(URL_CHECK, { method: "POST", headers: { ...headers, "content-length": String(body.byteLength) }, body });
  const stream = new ReadableStream<Uint8Array>({ start: (c) => (c.enqueue(body), c.close()) });
  return new Request(URL_CHECK, { method: "POST", headers, body: stream, duplex: "half" } as RequestInit);
}

const binary = (service: string) => toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service })) as Uint8Array<ArrayBuffer>;
const json = (service: string) => new TextEncoder().encode(JSON.stringify({ service }));

async function answer(res: Response) {
  return { status: res.status, type: res.headers.get("content-type"), asked: res.headers.get("x-asked"), body: new Uint8Array(await res.arrayBuffer()) };
}

describe("Connect unary calls read whole up front answer as through Connect's streams", () => {
  for (const [format, type, encode] of [["binary", "application/proto", binary], ["JSON", "application/json", json]] as const) {
    test(`AnswersAndHeadersAreTheSame (${format})`, async () => {
      const [sized, streamed] = [await answer(await app().fetch(post(encode("orders"), type, true))), await answer(await app().fetch(post(encode("orders"), type, false)))];
      expect(sized.status).toBe(200);
      expect(sized.asked).toBe("orders");
      expect(sized).toEqual(streamed);
    });

    test(`ErrorsKeepTheirHttpStatusAndJsonBody (${format})`, async () => {
      const [sized, streamed] = [await answer(await app().fetch(post(encode("bad"), type, true))), await answer(await app().fetch(post(encode("bad"), type, false)))];
      expect(sized.status).toBe(400);
      expect(sized.type).toBe("application/json");
      expect(JSON.parse(new TextDecoder().decode(sized.body))).toEqual({ code: "invalid_argument", message: "service bad is not known" });
      expect(sized).toEqual(streamed);
    });
  }

  test("ABodyOverTheReadLimitIsRefusedAsConnectRefusesIt", async () => {
    const big = binary("x".repeat(200));
    const [sized, streamed] = [await answer(await app(64).fetch(post(big, "application/proto", true))), await answer(await app(64).fetch(post(big, "application/proto", false)))];
    expect(sized.status).toBe(429);
    // Connect names the size when the request declared it.
    expect(JSON.parse(new TextDecoder().decode(sized.body))).toEqual({ code: "resource_exhausted", message: `message size ${big.byteLength} is larger than configured readMaxBytes 64` });
    expect([streamed.status, JSON.parse(new TextDecoder().decode(streamed.body)).code]).toEqual([429, "resource_exhausted"]);
  });
});

describe("a procedure this build does not serve (a newer peer's), as Connect answers one", () => {
  const fetch = ((input: RequestInfo | URL, init?: RequestInit) => app().fetch(new Request(input, init))) as typeof globalThis.fetch;
  /** The code and message a call of a procedure the app has no route for fails with. */
  const refusal = async (call: Promise<unknown>) => {
    const e = ConnectError.from(await call.then(() => new Error("answered"), (e: unknown) => e));
    return { code: e.code, message: e.rawMessage };
  };

  for (const [name, transport] of [
    ["Connect, JSON", createConnectTransport({ baseUrl: "http://tern.test", fetch, useBinaryFormat: false })],
    ["Connect, binary", createConnectTransport({ baseUrl: "http://tern.test", fetch, useBinaryFormat: true })],
    ["gRPC-web", createGrpcWebTransport({ baseUrl: "http://tern.test", fetch })],
  ] as const) {
    test(`AnUnknownProcedureIsUnimplemented, so feature detection works against this build (${name})`, async () => {
      const admin = createClient(AdminService, transport);
      expect((await refusal(admin.pullReplicationTasks({ clusterName: "b" }))).code).toBe(Code.Unimplemented);
      expect((await refusal((async () => { for await (const _ of admin.streamReplicationTasks({ clusterName: "b" })); })())).code).toBe(Code.Unimplemented);
    });
  }

  test("TheConnectAnswerIsHttp404WithAnUnimplementedErrorNamingTheProcedure", async () => {
    const res = await app().fetch(new Request("http://tern.test/tern.admin.v1.AdminService/PullReplicationTasks", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" }));
    expect([res.status, res.headers.get("content-type")]).toEqual([404, "application/json"]);
    expect(await res.json()).toEqual({ code: "unimplemented", message: "procedure tern.admin.v1.AdminService/PullReplicationTasks is not served by this tern version" });
  });

  test("AnUnknownProcedureGetsARequestIdAndIsCountedAndLoggedAsARefusedCall; a path that is no procedure is not", async () => {
    const metrics = createMetrics();
    const lines: Record<string, unknown>[] = [];
    const served = app(1 << 20, { metrics, log: createLogger({ write: (l) => lines.push(JSON.parse(l)) }) });
    const call = (path: string, header: Record<string, string> = {}) =>
      served.fetch(new Request(`http://tern.test${path}`, { method: "POST", headers: { "content-type": "application/json", ...header }, body: "{}" }));
    const mine = await call("/tern.admin.v1.AdminService/PullReplicationTasks", { "x-request-id": "caller-1" });
    expect([mine.status, mine.headers.get("x-request-id"), ((await mine.json()) as { code: string }).code]).toEqual([404, "caller-1", "unimplemented"]);
    const theirs = await call("/tern.admin.v1.AdminService/PullReplicationTasks");
    expect(theirs.headers.get("x-request-id")).toMatch(/^[0-9A-Z]{26}$/);
    // A made-up path's name is shown as any client input (at most 300 characters), in the answer and the log.
    const long = await call(`/${"x".repeat(400)}.S/M`);
    expect(((await long.json()) as { message: string }).message).toBe(`procedure "${"x".repeat(300)}…" (404 characters) is not served by this tern version`);
    expect((await served.fetch(new Request("http://tern.test/nope"))).headers.get("x-request-id")).toBeNull();
    // One series for every unknown procedure, as a caller may make up any number of them.
    const rendered = metrics.render();
    expect(rendered).toContain(`service_requests{operation="_unknown_",namespace=""} 3`);
    expect(rendered).toContain(`service_errors{operation="_unknown_",namespace="",code="Unimplemented"} 3`);
    // The second call alike is left out of the log for 10 s, as refused calls alike are. The code
    // by name, as the answer gives it: a number (12) is no word an operator greps for.
    expect(lines.map((l) => [l.msg, l.requestId, l.operation, l.code])).toEqual([
      ["rpc refused before its handler", "caller-1", "_unknown_", "unimplemented"],
      ["rpc refused before its handler", expect.any(String), "_unknown_", "unimplemented"],
    ]);
    expect(lines[0]!.error).toBe("procedure tern.admin.v1.AdminService/PullReplicationTasks is not served by this tern version");
  });

  test("APathThatIsNoProcedureIsStillNotFound", async () => {
    const res = await app().fetch(new Request("http://tern.test/nope"));
    expect([res.status, await res.json()]).toEqual([404, { code: "not_found", message: "no route for GET /nope" }]);
  });
});
