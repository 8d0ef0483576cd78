/**
 * Deno entry (Deno 2): `deno run -A dist/deno/tern.mjs [--config PATH]` after
 * `bun scripts/build-runtimes.ts`. HTTP/1.1 through Deno.serve; native gRPC through
 * Deno's node:http2 compatibility layer.
 */
import { runEntry } from "./boot";

/** The part of the Deno namespace this entry uses (no Deno types in this Bun project). */
interface DenoServer {
  addr: { port: number };
  shutdown(): Promise<void>;
}
declare const Deno: {
  serve(
    opts: { hostname: string; port: number; onListen?: (addr: { port: number }) => void },
    handler: (req: Request, info: { completed: Promise<void> }) => Response | Promise<Response>,
  ): DenoServer;
};

await runEntry({
  runtime: "deno",
  entryUrl: import.meta.url,
  async serveHttp(fetch, hostname, port) {
    // Requests whose answer is not yet wholly sent (a stream's included).
    let answering = 0;
    let allAnswered: (() => void) | undefined;
    const handler = (req: Request, info: { completed: Promise<void> }) => {
      answering++;
      const done = () => --answering === 0 && allAnswered?.();
      info.completed.then(done, done);
      return fetch(req);
    };
    const server = await new Promise<DenoServer>((resolve) => {
      // onListen silences Deno's own "Listening on" line; tern logs its own.
      const s: DenoServer = Deno.serve({ hostname, port, onListen: () => queueMicrotask(() => resolve(s)) }, handler);
    });
    return {
      port: server.addr.port,
      async close(graceMs) {
        // shutdown() also waits for a connection that sent the HTTP/2 preface and no SETTINGS
        // (Deno.serve speaks h2c): it held the stop for the grace. The calls were refused and the
        // long polls answered (boot.ts): once every answer is sent, nothing is left to wait for.
        // Not the signal: an abort cut answers just sent (the long poll's), and after shutdown() throws BadResource.
        const answered = answering === 0 ? Promise.resolve() : new Promise<void>((r) => (allAnswered = r));
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([server.shutdown(), answered, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
        clearTimeout(timer);
      },
    };
  },
});
