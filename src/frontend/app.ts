import { createConnectRouter, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
// createAsyncIterable and readAllBytes are among connect's private exports: fine under package.json's exact version pin, as connect asks.
import { createAsyncIterable, createFetchHandler, readAllBytes, type UniversalServerResponse } from "@connectrpc/connect/protocol";
import { Hono } from "hono";
import type { Metrics } from "../observability/metrics";
import { rpcPath, type RefuseUnserved } from "./refused-calls";

export interface AppDeps {
  routes: (router: ConnectRouter) => void;
  interceptors: Interceptor[];
  metrics: Metrics;
  /** Refuses a call to a procedure this build does not serve, counted and logged as refused calls are. */
  refuseUnserved: RefuseUnserved;
  /** True while the server can serve (database reachable). */
  isServing: () => Promise<boolean>;
  /** Largest request body accepted, bytes. */
  readMaxBytes: number;
}

/**
 * How a JSON request is read: strictly, as the proto3 JSON mapping has it by default. connect's
 * default ignored a field name or an enum value name it did not know: a misspelt
 * "workflowIdReusePolicy" or "WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATES" started the run under
 * the default policy, answering 200. tern's own clients and peers speak binary, where unknown
 * fields are skipped as protobuf has them.
 */
export const REQUEST_JSON = { ignoreUnknownFields: false };

/** The HTTP app: Connect, gRPC-web and JSON at each RPC path, plus /health and /metrics. */
export function createApp({ routes, interceptors, metrics, refuseUnserved, isServing, readMaxBytes }: AppDeps): Hono {
  const router = createConnectRouter({ interceptors, readMaxBytes, jsonOptions: REQUEST_JSON });
  routes(router);
  const app = new Hono();
  for (const handler of router.handlers) {
    const fetchHandler = createFetchHandler(handler);
    if (handler.method.methodKind !== "unary") {
      app.all(handler.requestPath, (c) => fetchHandler(c.req.raw));
      continue;
    }
    // Unary bodies are tiny: a buffered body spares Bun's ReadableStream-to-socket path.
    app.all(handler.requestPath, async (c) => {
      const req = c.req.raw;
      if (plainConnectUnary(req.method, req.headers, readMaxBytes)) {
        // The body read whole up front, handed over as one chunk: no stream to adapt either way.
        const body = createAsyncIterable([new Uint8Array(await req.arrayBuffer())]);
        return bufferedResponse(await handler({ httpVersion: "", method: req.method, url: req.url, header: req.headers, body, signal: req.signal }));
      }
      const res = await fetchHandler(req);
      return new Response(await res.arrayBuffer(), { status: res.status, headers: res.headers });
    });
  }
  app.get("/health", async (c) =>
    (await isServing()) ? c.json({ status: "SERVING" }) : c.json({ status: "NOT_SERVING" }, 503),
  );
  app.get("/metrics", (c) => c.text(metrics.render(), 200, { "content-type": "text/plain; version=0.0.4" }));
  app.notFound((c) => {
    if (!rpcPath(c.req.method, c.req.path)) return c.json({ code: "not_found", message: `no route for ${c.req.method} ${c.req.path}` }, 404);
    // Still HTTP 404 with code unimplemented (a peer reads it as an older tern), now with a request id, counted and logged.
    const { requestId, error } = refuseUnserved(c.req.path, c.req.header("x-request-id"));
    return c.json({ code: "unimplemented", message: error.rawMessage }, 404, { "x-request-id": requestId });
  });
  return app;
}

/**
 * True for a Connect unary POST (binary or JSON) with an uncompressed body of a declared
 * length within readMaxBytes, which may be read whole before Connect's handler runs (it
 * checks the limit again). Anything else (gRPC, gRPC-web, a compressed or unsized body, one
 * over the limit, to be refused as Connect refuses it) goes through createFetchHandler's streams.
 */
function plainConnectUnary(method: string, header: Headers, readMaxBytes: number): boolean {
  if (method !== "POST") return false;
  const type = header.get("content-type");
  if (type !== "application/proto" && type !== "application/json" && type !== "application/json; charset=utf-8") return false;
  const encoding = header.get("content-encoding");
  if (encoding && encoding !== "identity") return false;
  const length = Number(header.get("content-length") ?? NaN);
  return Number.isInteger(length) && length >= 0 && length <= readMaxBytes;
}

/** A universal handler's answer as one buffered Response (our own answer: no read limit). */
async function bufferedResponse(res: UniversalServerResponse): Promise<Response> {
  const body = res.body ? await readAllBytes(res.body, Number.POSITIVE_INFINITY) : new Uint8Array(0);
  return new Response(body as Uint8Array<ArrayBuffer>, { status: res.status, headers: res.header });
}
