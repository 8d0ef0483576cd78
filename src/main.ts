/**
 * Bun entry point: `bun run server [--config PATH]`. The only module that calls Bun
 * APIs; the core (createTernServer) is web-standard: src/entry/node.ts and
 * src/entry/deno.ts run it on Node and Deno.
 */

import { startSettings } from "./entry/start-settings";

/**
 * Settings the runtime reads at process start only, which the server wants unless the
 * operator chose them: when any is missing, the server re-executes itself at once (same pid,
 * arguments and runtime flags) with it set (src/entry/start-settings.ts). README, "Configuration".
 */
const settings = startSettings(process.env, navigator.hardwareConcurrency);
const missing = Object.entries(settings).map(([k, v]) => `${k}=${v}`).join(" ");
/*
 * Under Bun's CPU profiler (--cpu-prof, --cpu-prof-md) the server does not re-execute: the
 * profiler's sampling signal (SIGPWR) could reach the process in execve, and the new
 * program, whose handler is not installed yet, dies of it (1 start in 6 here).
 */
const profiled = process.execArgv.some((a) => a.startsWith("--cpu-prof"));
if (missing && profiled) {
  console.warn(`tern: under the CPU profiler, not restarting with ${missing}; set them in the environment to profile the server as it runs unprofiled`);
} else if (missing && process.platform !== "win32" && process.execve) {
  try {
    process.execve(process.execPath, [process.execPath, ...process.execArgv, ...process.argv.slice(1)], { ...process.env, ...settings });
  } catch (e) {
    console.warn(`tern: could not restart with ${missing} (${(e as Error).message}); running with Bun's defaults`);
  }
}

// Imported after the re-exec: the process that re-executes itself loads nothing more than the settings.
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
        // stop(false) waits for a connection that sent part of a request (it held the stop for the
        // grace): once no request is being answered, what is left is such connections, cut.
        const idle = setInterval(() => server.pendingRequests === 0 && void server.stop(true), 20);
        const timer = setTimeout(() => void server.stop(true), graceMs);
        await graceful;
        clearInterval(idle);
        clearTimeout(timer);
      },
    };
  },
});
