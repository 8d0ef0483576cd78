/**
 * A fetch whose call ends when its signal aborts, on every runtime. Node's fetch (undici) and
 * Deno's link the caller's signal to the request they make only weakly: once a garbage
 * collection took that request (the call still waiting for its answer, or its body being read),
 * an abort no longer reaches it, and the call waits on for the peer (a stopping server's
 * replication stream read on, the next message 10 s away and the one after it, past the stop's
 * limit: exit 1). Here the signal holds the call: an abort rejects a call still waiting for its
 * answer, and errors (and cancels) a body being read.
 */
export function abortableFetch(fetchImpl: typeof fetch): typeof fetch {
  return (async (input: RequestInfo | URL, init?: RequestInit) => {
    const signal = init?.signal;
    if (!signal) return fetchImpl(input, init);
    signal.throwIfAborted();
    let onAbort!: () => void;
    const aborted = new Promise<never>((_, reject) => (onAbort = () => reject(signal.reason)));
    signal.addEventListener("abort", onAbort, { once: true });
    let res: Response;
    try {
      res = await Promise.race([fetchImpl(input, init), aborted]);
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
    if (!res.body) return res;
    // The pipe listens on the signal itself: an abort cancels res.body and errors what the caller reads.
    return new Response(res.body.pipeThrough(new TransformStream(), { signal }), res);
  }) as typeof fetch;
}
