/** A token bucket: rps tokens a second, at most burst saved up. */
export interface TokenBucket {
  /** Takes a token; returns 0 when allowed, else the ms until one is free. */
  take(now?: number): number;
}

/** Creates a token bucket; rps 0 means unlimited. */
export function createTokenBucket(rps: number, burst: number): TokenBucket {
  let tokens = burst;
  let last = performance.now();
  return {
    take(now = performance.now()) {
      if (rps <= 0) return 0;
      tokens = Math.min(burst, tokens + ((now - last) / 1000) * rps);
      last = now;
      if (tokens >= 1) {
        tokens -= 1;
        return 0;
      }
      return Math.ceil(((1 - tokens) / rps) * 1000);
    },
  };
}

/** Per-host and per-namespace limits: a request must get a token from both. */
export function createRateLimiter(host: { rps: number; burst: number }, perNamespace: { rps: number; burst: number }) {
  const hostBucket = createTokenBucket(host.rps, host.burst);
  const buckets = new Map<string, TokenBucket>();
  return {
    /** 0 when allowed; otherwise the retry hint in ms and which limit refused. */
    take(namespace: string | undefined): { waitMs: number; scope?: string } {
      if (namespace) {
        let b = buckets.get(namespace);
        if (!b) buckets.set(namespace, (b = createTokenBucket(perNamespace.rps, perNamespace.burst)));
        const wait = b.take();
        if (wait > 0) return { waitMs: wait, scope: `namespace ${namespace}` };
      }
      const wait = hostBucket.take();
      return wait > 0 ? { waitMs: wait, scope: "host" } : { waitMs: 0 };
    },
  };
}
