import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { createServer, type Http2Server, type ServerHttp2Session } from "node:http2";

/** Options of the native gRPC listener. */
export interface GrpcListenOptions {
  routes: (router: ConnectRouter) => void;
  interceptors: Interceptor[];
  host: string;
  port: number;
  readMaxBytes: number;
}

/** Native gRPC (and Connect over HTTP/2) on a cleartext HTTP/2 (h2c) listener. */
export async function listenGrpc(opts: GrpcListenOptions): Promise<{ port: number; close(graceMs?: number): Promise<void> }> {
  const handler = connectNodeAdapter({ routes: opts.routes, interceptors: opts.interceptors, readMaxBytes: opts.readMaxBytes });
  const server: Http2Server = createServer(handler);
  // server.close() only stops accepting: open sessions (clients keep them for reuse) would hold it.
  const sessions = new Set<ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
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
      for (const s of sessions) s.close(); // GOAWAY: in-flight streams finish, no new ones
      const timer = setTimeout(() => sessions.forEach((s) => s.destroy()), graceMs);
      await closed;
      clearTimeout(timer);
    },
  };
}
