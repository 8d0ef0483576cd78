/**
 * Settings the runtime reads at process start only, which the Bun server wants unless the
 * operator chose them (src/main.ts re-executes itself with those missing). README, "Configuration".
 * No imports: main.ts loads this before it re-executes.
 */
export function startSettings(env: Record<string, string | undefined>, cores: number): Record<string, string> {
  const settings: Record<string, string> = {};
  /*
   * Bun's native allocator (mimalloc) hands pages back to the OS 100 ms after they empty
   * (madvise), and the next request's buffers fault them back in. A server allocates and
   * frees buffers on every request and statement: at 250 writes per second, perf put that
   * churn at about an eighth of a passive server's CPU on this machine (TLB flushes are
   * costly on a virtual machine). With a 1 s delay, memory freed after a burst still goes back
   * to the OS a second later.
   */
  if (env.MIMALLOC_PURGE_DELAY === undefined) settings.MIMALLOC_PURGE_DELAY = "1000";
  /*
   * JavaScriptCore marks the heap in each collection on as many threads as there are cores,
   * and the collection waits for all of them. On two cores shared with PostgreSQL and other
   * processes the helper often waits for a CPU, and so does every request the pause holds: one
   * marker cut the pauses (p90 2.3 against 2.8-3.0 ms) and the replication lag's p99 to
   * 0.72-0.80x in A/B runs at 500 ops/s, CPU unchanged (bench/README.md, 2026-12-05).
   */
  if (env.BUN_JSC_numberOfGCMarkers === undefined && cores <= 2) settings.BUN_JSC_numberOfGCMarkers = "1";
  /*
   * JavaScriptCore's top tier (FTL) compiles a server's hot code for a minute and more of load
   * after start, on threads that on two shared cores take the CPU the requests, PostgreSQL and
   * the replication stream wait for; the tier below it (DFG) compiles several times cheaper,
   * and about half a server's main thread is Bun's own native code (sockets, HTTP, streams),
   * where FTL's faster JavaScript gains nothing. Without FTL, A/B runs at 500 ops/s: the JIT
   * threads' CPU 0.34x, all CPU per event 0.90x, the replication lag's p50 / p95 / p99 0.61x /
   * 0.75x / 0.79x; after a minute of load first, CPU 0.93x, lag 0.72x / 0.90x / 0.87x;
   * saturated writes unchanged (bench/README.md, 2026-12-05, morning).
   */
  if (env.BUN_JSC_useFTLJIT === undefined && cores <= 2) settings.BUN_JSC_useFTLJIT = "0";
  return settings;
}
