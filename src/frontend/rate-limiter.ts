/** A token bucket: rps tokens a second, at most burst saved up. */
export interface TokenBucket {
  /** Takes a token; returns 0 when allowed, else the ms until one is free. */
  take(now?: number): number;
  /** Takes a token for a call already let through elsewhere: the bucket may go below empty, and refuses until it refills. */
  charge(now?: number): void;
  /** Gives back a token taken for a call that another bucket is charged for. */
  give(): void;
}

const TOKEN_EPSILON = 1e-9;

/** Creates a token bucket; rps 0 means unlimited. */
export function createTokenBucket(rps: number, burst: number): TokenBucket {
  let tokens = burst;
  let last = performance.now();
  const refill = (now: number) => {
    tokens = Math.min(burst, tokens + ((now - last) / 1000) * rps);
    last = now;
  };
  return {
    take(now = performance.now()) {
      if (rps <= 0) return 0;
      refill(now);
      // A refill's sum can fall short of a whole token by a rounding error ((t + 100) - t is
      // 99.99999999999994 for some t), which would refuse a caller that waited the wait given.
      if (tokens >= 1 - TOKEN_EPSILON) {
        tokens -= 1;
        return 0;
      }
      return Math.ceil(((1 - tokens) / rps) * 1000);
    },
    charge(now = performance.now()) {
      if (rps <= 0) return;
      refill(now);
      tokens -= 1;
    },
    give() {
      tokens = Math.min(burst, tokens + 1);
    },
  };
}

/** Per-host and per-namespace limits: a request must get a token from both. */
export function createRateLimiter(host: { rps: number; burst: number }, perNamespace: { rps: number; burst: number }) {
  const hostBucket = createTokenBucket(host.rps, host.burst);
  const buckets = new Map<string, TokenBucket>();
  const bucketOf = (namespace: string) => {
    let b = buckets.get(namespace);
    if (!b) buckets.set(namespace, (b = createTokenBucket(perNamespace.rps, perNamespace.burst)));
    return b;
  };
  return {
    /** 0 when allowed; otherwise the retry hint in ms and which limit refused. */
    take(namespace: string | undefined): { waitMs: number; scope?: string } {
      if (namespace) {
        const wait = bucketOf(namespace).take();
        if (wait > 0) return { waitMs: wait, scope: `namespace ${namespace}` };
      }
      const wait = hostBucket.take();
      return wait > 0 ? { waitMs: wait, scope: "host" } : { waitMs: 0 };
    },
    /**
     * A call let through on the bucket of names not read yet (from) was for namespace, found
     * since: its token goes back there and is charged to the namespace's own bucket, so that
     * neither the namespace's limit nor the other names' share is spent by its first calls.
     */
    settle(from: string, namespace: string): void {
      buckets.get(from)?.give();
      bucketOf(namespace).charge();
    },
  };
}
