import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { createServer, type Http2Server } from "node:http2";

/** Native gRPC (and Connect over HTTP/2) on a cleartext HTTP/2 (h2c) listener. */
export async function listenGrpc(opts: {
  routes: (router: ConnectRouter) => void;
  interceptors: Interceptor[];
  host: string;
  port: number;
  readMaxBytes: number;
}): Promise<{ port: number; close(): Promise<void> }> {
  const handler = connectNodeAdapter({ routes: opts.routes, interceptors: opts.interceptors, readMaxBytes: opts.readMaxBytes });
  const server: Http2Server = createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const address = server.address();
  return {
    port: typeof address === "object" && address ? address.port : opts.port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
