/**
 * Long polls of one kind, ended together when the server stops: `run` hands the poll a
 * signal that also aborts on `end` (a poll answers with what it has once its signal
 * aborts), refuses new polls after `end`, and `end` resolves once none runs any more. A
 * stopping server ends them before its listeners drain (else a peer's poll holds the stop
 * for the whole grace period) and before its database closes under them.
 */
export function createLongPolls(refusal: () => Error) {
  const ending = new AbortController();
  const inflight = new Set<Promise<unknown>>();
  const linked = new WeakSet<AbortSignal>();
  return {
    /**
     * signal, also aborted on `end`: for a caller that runs many polls under one request (a
     * stream's rounds), made once and passed to each `run` rather than joined again at each.
     */
    link(signal: AbortSignal): AbortSignal {
      const s = AbortSignal.any([signal, ending.signal]);
      linked.add(s);
      return s;
    },
    run<T>(signal: AbortSignal | undefined, poll: (signal: AbortSignal) => Promise<T>): Promise<T> {
      if (ending.signal.aborted) return Promise.reject(refusal());
      const p = poll(!signal ? ending.signal : linked.has(signal) ? signal : AbortSignal.any([signal, ending.signal]));
      inflight.add(p);
      return p.finally(() => inflight.delete(p));
    },
    async end(): Promise<void> {
      ending.abort();
      await Promise.allSettled([...inflight]);
    },
  };
}

export type LongPolls = ReturnType<typeof createLongPolls>;
