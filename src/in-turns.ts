/**
 * fn of each item, at most n at a time, taken in items' order, answers in the same order; fails
 * as the first that fails does. Once signal aborts no item more is taken (theirs are left
 * undefined).
 */
export async function inTurns<T, R>(items: T[], n: number, fn: (item: T) => Promise<R>, signal?: AbortSignal): Promise<(R | undefined)[]> {
  const out: (R | undefined)[] = new Array(items.length);
  let at = 0;
  const worker = async () => {
    while (at < items.length && !signal?.aborted) {
      const i = at++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  return out;
}
