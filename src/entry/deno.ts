/**
 * Deno entry (Deno 2): `deno run -A dist/deno/tern.mjs [--config PATH]` after
 * `bun scripts/build-runtimes.ts`. HTTP/1.1 through Deno.serve; native gRPC through
 * Deno's node:http2 compatibility layer.
 */
import { runEntry } from "./boot";

/** The part of the Deno namespace this entry uses (no Deno types in this Bun project). */
interface DenoServer {
  addr: { port: number };
  finished: Promise<void>;
  shutdown(): Promise<void>;
}
declare const Deno: {
  serve(
    opts: { hostname: string; port: number; onListen?: (addr: { port: number }) => void },
    handler: (req: Request) => Response | Promise<Response>,
  ): DenoServer;
};

await runEntry({
  runtime: "deno",
  entryUrl: import.meta.url,
  async serveHttp(fetch, hostname, port) {
    const server = await new Promise<DenoServer>((resolve) => {
      // onListen silences Deno's own "Listening on" line; tern logs its own.
      const s: DenoServer = Deno.serve({ hostname, port, onListen: () => queueMicrotask(() => resolve(s)) }, (req) => fetch(req));
    });
    return {
      port: server.addr.port,
      async close(graceMs) {
        // shutdown() waits for open requests; a stalled long poll must not hold the stop forever.
        await Promise.race([server.shutdown(), new Promise((r) => setTimeout(r, graceMs))]);
      },
    };
  },
});
