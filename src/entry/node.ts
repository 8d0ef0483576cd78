/**
 * Node entry (Node 20+): `node dist/node/tern.mjs [--config PATH]` after
 * `bun scripts/build-runtimes.ts`. HTTP/1.1 through @hono/node-server, native gRPC
 * through node:http2 — the same core as the Bun entry.
 */
import { serve } from "@hono/node-server";
import type { Server } from "node:http";
import { runEntry } from "./boot";
import { idleCloser } from "./idle-close";

await runEntry({
  runtime: "node",
  entryUrl: import.meta.url,
  async serveHttp(fetch, hostname, port) {
    const server = await new Promise<Server>((resolve, reject) => {
      const s = serve({ fetch, hostname, port }, () => resolve(s)) as Server;
      s.once("error", reject);
    });
    // Long polls: Node's default 5-minute requestTimeout must not cut them either.
    server.requestTimeout = 0;
    // Node's closeIdleConnections leaves a connection that sent part of a request: it held the stop for the grace.
    const closeIdle = idleCloser(server);
    const address = server.address();
    return {
      port: typeof address === "object" && address ? address.port : port,
      async close(graceMs) {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        closeIdle();
        const timer = setTimeout(() => server.closeAllConnections(), graceMs);
        await closed;
        clearTimeout(timer);
      },
    };
  },
});
