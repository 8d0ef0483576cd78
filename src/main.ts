/**
 * Bun entry point: `bun run server [--config PATH]`. The only module that calls Bun
 * APIs; the core (createTernServer) is web-standard: src/entry/node.ts and
 * src/entry/deno.ts run it on Node and Deno.
 */
import { runEntry } from "./entry/boot";

await runEntry({
  runtime: "bun",
  entryUrl: import.meta.url,
  async serveHttp(fetch, hostname, port) {
    // idleTimeout 0: Bun would cut long polls and streams after 10 s.
    const server = Bun.serve({ hostname, port, fetch, idleTimeout: 0 });
    return {
      port: server.port ?? port,
      async close(graceMs) {
        const graceful = server.stop(false);
        const timer = setTimeout(() => void server.stop(true), graceMs);
        await graceful;
        clearTimeout(timer);
      },
    };
  },
});
