/** Most failures a failure log remembers since the last success; past it the oldest are forgotten (said again). */
const MAX_REMEMBERED = 16;

/**
 * Which failures of a retried call to log: each once, not per retry, until a call succeeds.
 * Failures are told apart by message without the request id a remote's error names, which is
 * new on every retry. Every failure since the last success is remembered, not only the last:
 * a PostgreSQL that stays down fails a retry as `connect ECONNREFUSED` or `write
 * CONNECTION_CLOSED` in turn, and was said at each change (a line a second for the outage).
 */
export function createFailureLog() {
  const said = new Set<string>();
  let failingSince: number | undefined;
  return {
    /** Whether message is a failure not logged since the last success (and remembers it). */
    isNew(message: string): boolean {
      const key = withoutRequestIds(message);
      failingSince ??= performance.now();
      if (said.has(key)) return false;
      said.add(key);
      if (said.size > MAX_REMEMBERED) said.delete(said.values().next().value!);
      return true;
    },
    /** A call succeeded; when it ends failures, for how long (ms) they went on since the first. */
    succeeded(): number | undefined {
      const failedForMs = failingSince === undefined ? undefined : performance.now() - failingSince;
      said.clear();
      failingSince = undefined;
      return failedForMs;
    },
  };
}

/**
 * text with each request id it names left out ("request id X" becomes "request id"): a remote's
 * error, or an answer to a client, names one new on every request, though the failure is the same.
 */
export function withoutRequestIds(text: string): string {
  return text.replace(/request id [^)";]+/g, "request id");
}


/**
 * Which failures and recoveries of a retried call to log, for a call that may fail and recover
 * again and again (a replication stream over a link cut every second): each failure once until a
 * call succeeds (createFailureLog) and its recovery, but each failure once per windowMs. A failure
 * left out in its window is written once it lasts past it; the next line of that failure says how
 * many were left out before it (`repeated`), each of which recovered, unlogged too.
 */
export function createFlapLog({ windowMs = 10_000, now = () => performance.now() }: { windowMs?: number; now?: () => number } = {}) {
  const failures = createFailureLog();
  /** Per failure (by message, request ids aside): when it was last written, and how many of it were left out since. */
  const written = new Map<string, { at: number; leftOut: number }>();
  /** The failure going on now, when it was left out. */
  let pending: string | undefined;
  return {
    /** Whether to write this failure now, and how many of it were left out before; undefined: not now. */
    failed(message: string): { repeated: number } | undefined {
      const key = withoutRequestIds(message);
      const at = now();
      const last = written.get(key);
      const recent = last !== undefined && at - last.at < windowMs;
      if (failures.isNew(message)) {
        pending = recent ? key : undefined;
        if (pending) return undefined;
      } else if (pending === undefined || recent) {
        // Written already, or left out and still in its window.
        return undefined;
      }
      pending = undefined;
      written.delete(key); // set again last: the map's order is the order lines were written
      written.set(key, { at, leftOut: 0 });
      if (written.size > MAX_REMEMBERED) written.delete(written.keys().next().value!);
      return { repeated: last?.leftOut ?? 0 };
    },
    /** A call succeeded: for how long (ms) failures went on, if they did and their failure was written. */
    recovered(): number | undefined {
      const failedForMs = failures.succeeded();
      if (failedForMs === undefined || pending === undefined) return failedForMs;
      const left = written.get(pending);
      if (left) left.leftOut++;
      pending = undefined;
      return undefined;
    },
  };
}
