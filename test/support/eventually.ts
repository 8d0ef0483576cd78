/** Polls until check passes (returns without throwing), or fails with its last error after timeout. */
export async function eventually<T>(
  check: () => T | Promise<T>,
  { timeout = 10_000, interval = 25 }: { timeout?: number; interval?: number } = {},
): Promise<T> {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > deadline) throw e;
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}
