import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { createApp } from "../../src/frontend/app";
import { createCallFailures } from "../../src/frontend/call-failures";
import { createRefuseUnserved } from "../../src/frontend/refused-calls";
import { createLogger } from "../../src/observability/log";
import { listenGrpc } from "../../src/frontend/grpc-server";
import { Health, HealthCheckResponse_ServingStatus } from "../../src/gen/grpc/health/v1/health_pb";
import { createMetrics } from "../../src/observability/metrics";
import { frame, rawGrpcCall } from "../support/raw-grpc";

// connect-es 2.1.2 answers a binary request body it cannot decode with INTERNAL ("parse binary:
// ..."), before any interceptor runs, where a JSON one is INVALID_ARGUMENT; mend 11 of
// scripts/patch-dependencies.mjs makes it INVALID_ARGUMENT in every protocol.

/** Health/Check, whose service "boom" fails as a real internal error would. */
const routes = (r: ConnectRouter) =>
  r.service(Health, {
    check(req) {
      if (req.service === "boom") throw new ConnectError("a defect of the server", Code.Internal);
      return { status: HealthCheckResponse_ServingStatus.SERVING };
    },
    async *watch() {},
  });

const PATH = "/grpc.health.v1.Health/Check";
/** Field 1 (service, a string) said to be 5 bytes long, with 1 after it. */
const TRUNCATED = new Uint8Array([0x0a, 0x05, 0x61]);
const BOOM = new Uint8Array([0x0a, 0x04, ...new TextEncoder().encode("boom")]);
const MESSAGE = "cannot decode message grpc.health.v1.HealthCheckRequest from binary: premature EOF";

describe("a request body that is no protobuf message is the caller's mistake (INVALID_ARGUMENT), in every protocol", () => {
  const metrics = createMetrics();
  const refuseUnserved = createRefuseUnserved({ metrics, failures: createCallFailures({ metrics, log: createLogger({ write: () => {} }) }) });
  const app = createApp({ routes, interceptors: [], metrics, refuseUnserved, isServing: async () => true, readMaxBytes: 1 << 20 });
  const post = (type: string, body: Uint8Array) =>
    app.fetch(new Request(`http://tern.test${PATH}`, { method: "POST", headers: { "content-type": type, "content-length": String(body.length) }, body: body as Uint8Array<ArrayBuffer> }));

  test("Connect, binary: HTTP 400 invalid_argument naming the message; a real internal error stays internal", async () => {
    const res = await post("application/proto", TRUNCATED);
    expect([res.status, await res.json()]).toEqual([400, { code: "invalid_argument", message: MESSAGE }]);
    const boom = await post("application/proto", BOOM);
    expect([boom.status, await boom.json()]).toEqual([500, { code: "internal", message: "a defect of the server" }]);
  });

  test("Connect, JSON: HTTP 400 invalid_argument, as connect-es already answered", async () => {
    const res = await post("application/json", new TextEncoder().encode("{bad"));
    expect(res.status).toBe(400);
    expect(((await res.json()) as { code: string }).code).toBe("invalid_argument");
  });

  test("gRPC-web: grpc-status 3", async () => {
    const text = await (await post("application/grpc-web+proto", frame(TRUNCATED))).text();
    expect(text).toContain("grpc-status: 3\r\n");
    expect(text).toContain(`grpc-message: ${encodeURIComponent(MESSAGE)}`);
  });

  describe("native gRPC (h2c)", () => {
    let grpc: Awaited<ReturnType<typeof listenGrpc>>;
    beforeAll(async () => {
      grpc = await listenGrpc({ routes, interceptors: [], refuseUnserved, host: "127.0.0.1", port: 0, readMaxBytes: 1 << 20 });
    });
    afterAll(() => grpc.close(0));

    /** grpc-status and grpc-message of one call. */
    const call = async (message: Uint8Array) => {
      const { status, message: text } = await rawGrpcCall(`http://127.0.0.1:${grpc.port}`, PATH, frame(message));
      return { status, message: text };
    };

    test("grpc-status 3 naming the message; a real internal error stays 13", async () => {
      expect(await call(TRUNCATED)).toEqual({ status: "3", message: MESSAGE });
      expect(await call(BOOM)).toEqual({ status: "13", message: "a defect of the server" });
    });
  });
});
