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

/**
 * A call let through on the bucket of names not read yet (from) for a name (name): settled on
 * the name's own bucket once, at the call's answer or at the name's next call, whichever first.
 */
export interface Borrow {
  readonly from: string;
  readonly name: string;
  settled: boolean;
}

/** Per-host and per-namespace limits: a request must get a token from both. */
export function createRateLimiter(host: { rps: number; burst: number }, perNamespace: { rps: number; burst: number }) {
  const hostBucket = createTokenBucket(host.rps, host.burst);
  const buckets = new Map<string, TokenBucket>();
  /** Borrows not settled yet, by the name they were for. */
  const open = new Map<string, Set<Borrow>>();
  const bucketOf = (namespace: string) => {
    let b = buckets.get(namespace);
    if (!b) buckets.set(namespace, (b = createTokenBucket(perNamespace.rps, perNamespace.burst)));
    return b;
  };
  const close = (b: Borrow, found: boolean) => {
    const of = open.get(b.name);
    of?.delete(b);
    if (of?.size === 0) open.delete(b.name);
    if (b.settled || !found) return;
    b.settled = true;
    buckets.get(b.from)?.give();
    bucketOf(b.name).charge();
  };
  return {
    /**
     * 0 when allowed; otherwise the retry hint in ms and which limit refused. With named (the
     * name a call gave, where namespace is the bucket of names not read yet), a call let through
     * comes with its Borrow, to settle once answered.
     */
    take(namespace: string | undefined, named?: string): { waitMs: number; scope?: string; borrow?: Borrow } {
      if (namespace) {
        // Calls of this name still in flight on another bucket are charged here first: a namespace's
        // concurrent first calls after a start, answered after its next calls were let through on a
        // full bucket of its own, took it below empty (3 more calls than its burst).
        for (const b of open.get(namespace) ?? []) close(b, true);
        const wait = bucketOf(namespace).take();
        if (wait > 0) return { waitMs: wait, scope: `namespace ${namespace}` };
      }
      const wait = hostBucket.take();
      if (wait > 0) return { waitMs: wait, scope: "host" };
      if (!namespace || !named || named === namespace) return { waitMs: 0 };
      const borrow: Borrow = { from: namespace, name: named, settled: false };
      open.set(named, (open.get(named) ?? new Set()).add(borrow));
      return { waitMs: 0, borrow };
    },
    /**
     * A borrowed call answered: if its name was found, its token goes back to the bucket it came
     * from and is charged to the namespace's own, so that neither the namespace's limit nor the
     * other names' share is spent by its first calls (once: a later call of the name may have).
     */
    settle(borrow: Borrow, found: boolean): void {
      close(borrow, found);
    },
  };
}
