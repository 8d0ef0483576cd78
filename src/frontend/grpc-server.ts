import { connectNodeAdapter, type ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { createServer, type Http2Server } from "node:http2";
import { REQUEST_JSON } from "./app";
import { rpcPath, type RefuseUnserved } from "./refused-calls";
import { sessionCloser } from "./session-closer";

/** Options of the native gRPC listener. */
export interface GrpcListenOptions {
  routes: (router: ConnectRouter) => void;
  interceptors: Interceptor[];
  refuseUnserved: RefuseUnserved;
  host: string;
  port: number;
  readMaxBytes: number;
}

/** Native gRPC (and Connect over HTTP/2) on a cleartext HTTP/2 (h2c) listener. */
export async function listenGrpc(opts: GrpcListenOptions): Promise<{ port: number; close(graceMs?: number): Promise<void> }> {
  const handler = connectNodeAdapter({ routes: opts.routes, interceptors: opts.interceptors, readMaxBytes: opts.readMaxBytes, jsonOptions: REQUEST_JSON, fallback: unservedFallback(opts.refuseUnserved) });
  const server: Http2Server = createServer(handler);
  // server.close() only stops accepting: open connections (clients keep them for reuse) would hold it.
  const connections = sessionCloser(server);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address();
  return {
    port: typeof address === "object" && address ? address.port : opts.port,
    async close(graceMs = 5_000) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      connections.closeIdle(); // GOAWAY: in-flight streams finish, no new ones
      const timer = setTimeout(() => connections.closeAll(), graceMs);
      await closed;
      clearTimeout(timer);
    },
  };
}

/**
 * connect-node's answer to a path no route serves, HTTP 404 without a body (gRPC clients read
 * it as UNIMPLEMENTED), with a procedure's call given a request id, counted and logged, as the
 * HTTP/1.1 app does one (app.ts).
 */
export function unservedFallback(refuse: RefuseUnserved): NonNullable<ConnectNodeAdapterOptions["fallback"]> {
  return (req, res) => {
    const path = (req.url ?? "/").split("?")[0]!;
    const callerId = req.headers["x-request-id"];
    const headers = rpcPath(req.method, path) ? { "x-request-id": refuse(path, typeof callerId === "string" ? callerId : undefined).requestId } : {};
    res.writeHead(404, headers);
    res.end();
  };
}
