import { createConnectRouter, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { createFetchHandler } from "@connectrpc/connect/protocol";
import { Hono } from "hono";
import type { Metrics } from "../observability/metrics";

export interface AppDeps {
  routes: (router: ConnectRouter) => void;
  interceptors: Interceptor[];
  metrics: Metrics;
  /** True while the server can serve (database reachable). */
  isServing: () => Promise<boolean>;
  /** Largest request body accepted, bytes. */
  readMaxBytes: number;
}

/** The HTTP app: Connect, gRPC-web and JSON at each RPC path, plus /health and /metrics. */
export function createApp({ routes, interceptors, metrics, isServing, readMaxBytes }: AppDeps): Hono {
  const router = createConnectRouter({ interceptors, readMaxBytes });
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
      const res = await fetchHandler(c.req.raw);
      return new Response(await res.arrayBuffer(), { status: res.status, headers: res.headers });
    });
  }
  app.get("/health", async (c) =>
    (await isServing()) ? c.json({ status: "SERVING" }) : c.json({ status: "NOT_SERVING" }, 503),
  );
  app.get("/metrics", (c) => c.text(metrics.render(), 200, { "content-type": "text/plain; version=0.0.4" }));
  app.notFound((c) => c.json({ code: "not_found", message: `no route for ${c.req.method} ${c.req.path}` }, 404));
  return app;
}
