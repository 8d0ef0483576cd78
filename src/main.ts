/**
 * Bun entry point: `bun run server [--config PATH]`. The only module that calls Bun
 * APIs; the core (createTernServer) is web-standard: src/entry/node.ts and
 * src/entry/deno.ts run it on Node and Deno.
 */

/**
 * Bun's native allocator (mimalloc) hands pages back to the OS 100 ms after they empty
 * (madvise), and the next request's buffers fault them back in. A server allocates and
 * frees buffers on every request and statement: at 250 writes per second, perf put that
 * churn at about an eighth of a passive server's CPU on this machine (TLB flushes are
 * costly on a virtual machine). Unless the operator chose a delay, the server re-executes
 * itself at once (same pid, arguments and runtime flags) with a 1 s delay: memory freed
 * after a burst still goes back to the OS a second later. Read at process start only,
 * hence the re-exec; README, "Configuration".
 */
const PURGE_DELAY_MS = "1000";
if (process.env.MIMALLOC_PURGE_DELAY === undefined && process.platform !== "win32" && process.execve) {
  try {
    process.execve(process.execPath, [process.execPath, ...process.execArgv, ...process.argv.slice(1)], {
      ...process.env,
      MIMALLOC_PURGE_DELAY: PURGE_DELAY_MS,
    });
  } catch (e) {
    console.warn(`tern: could not restart with MIMALLOC_PURGE_DELAY=${PURGE_DELAY_MS} (${(e as Error).message}); running with Bun's default`);
  }
}

// Imported after the re-exec: the process that re-executes itself loads nothing more.
const { runEntry } = await import("./entry/boot");

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
