/** The longest a timer waits (2^31 - 1 ms, about 24.8 days): a longer one fires after 1 ms (Node and Bun). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Resolves after ms, or at once when signal aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done);
  });
}
