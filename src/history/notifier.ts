/** Wakes long polls on a run when its history grows (in this process). */
export interface EventNotifier {
  notify(runId: string): void;
  /** Resolves when notify(runId) is called or timeoutMs passes. */
  wait(runId: string, timeoutMs: number, signal?: AbortSignal): Promise<void>;
}

/** Creates a notifier; waiters are plain resolvers keyed by run id. */
export function createEventNotifier(): EventNotifier {
  const waiters = new Map<string, Set<() => void>>();
  return {
    notify(runId) {
      const set = waiters.get(runId);
      if (!set) return;
      waiters.delete(runId);
      for (const wake of set) wake();
    },
    wait(runId, timeoutMs, signal) {
      return new Promise<void>((resolve) => {
        let set = waiters.get(runId);
        if (!set) waiters.set(runId, (set = new Set()));
        const done = () => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", done);
          waiters.get(runId)?.delete(done);
          if (waiters.get(runId)?.size === 0) waiters.delete(runId);
          resolve();
        };
        const timer = setTimeout(done, timeoutMs);
        signal?.addEventListener("abort", done);
        set.add(done);
      });
    },
  };
}

/** A wait registered before the read it guards; see listen. */
export interface Listening {
  /** Resolves on a notify of the key (also one between the read and the await), the timeout, or an abort. */
  woke: Promise<void>;
  /** Drops the wait once the read made it moot (it answered, or failed). */
  cancel(): void;
}

/**
 * Starts waiting on key now, before the read that decides whether to wait: a notify that
 * lands between that read and the await still wakes the waiter (a wait registered after the
 * read would miss it and sleep until its timeout).
 */
export function listen(notifier: EventNotifier, key: string, timeoutMs: number, signal?: AbortSignal): Listening {
  return listenAny(notifier, [key], timeoutMs, signal);
}

/** listen on several keys at once: a notify of any wakes it. */
export function listenAny(notifier: EventNotifier, keys: readonly string[], timeoutMs: number, signal?: AbortSignal): Listening {
  const stop = new AbortController();
  const s = signal ? AbortSignal.any([signal, stop.signal]) : stop.signal;
  const woke = keys.length === 1 ? notifier.wait(keys[0]!, timeoutMs, s) : Promise.race(keys.map((k) => notifier.wait(k, timeoutMs, s)));
  // Every wait ends with the first: the others are dropped, not left until their timeout.
  return { woke: woke.finally(() => stop.abort()), cancel: () => stop.abort() };
}
