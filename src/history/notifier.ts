/** Wakes long polls on a run when its history grows (in this process). */
export interface EventNotifier {
  notify(runId: string): void;
  /** Resolves when notify(runId) is called or timeoutMs passes. */
  wait(runId: string, timeoutMs: number, signal?: AbortSignal): Promise<void>;
  /**
   * Resolves when notify is called for any of keys, timeoutMs passes or signal aborts: one
   * timer and one abort listener, however many keys (a pull of 512 shards waits on 512).
   */
  waitAny(keys: readonly string[], timeoutMs: number, signal?: AbortSignal): Promise<void>;
  /** waitAny that its caller can drop (Listening.cancel ends it at once), without an AbortController of its own. */
  listenAny(keys: readonly string[], timeoutMs: number, signal?: AbortSignal): Listening;
}

/** Creates a notifier; waiters are plain resolvers keyed by run id. keysWaited: how many keys have a waiter (tests, diagnostics). */
export function createEventNotifier(): EventNotifier & { keysWaited(): number } {
  const waiters = new Map<string, Set<() => void>>();
  function listenAny(keys: readonly string[], timeoutMs: number, signal?: AbortSignal): Listening {
    let cancel = () => {};
    const woke = new Promise<void>((resolve) => {
      if (signal?.aborted) return resolve();
      let settled = false;
      const done = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        for (const k of keys) {
          const set = waiters.get(k);
          if (set?.delete(done) && set.size === 0) waiters.delete(k);
        }
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      signal?.addEventListener("abort", done);
      for (const k of keys) {
        let set = waiters.get(k);
        if (!set) waiters.set(k, (set = new Set()));
        set.add(done);
      }
      cancel = done;
    });
    return { woke, cancel: () => cancel() };
  }
  return {
    notify(runId) {
      const set = waiters.get(runId);
      if (!set) return;
      waiters.delete(runId);
      for (const wake of set) wake();
    },
    wait: (runId, timeoutMs, signal) => listenAny([runId], timeoutMs, signal).woke,
    waitAny: (keys, timeoutMs, signal) => listenAny(keys, timeoutMs, signal).woke,
    listenAny,
    keysWaited: () => waiters.size,
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

/**
 * listen on several keys at once: a notify of any wakes it. Cancelled by a call, not an
 * abort: a stream's source listens twice per message, and an abort makes an AbortError
 * (with its stack) and an event each time.
 */
export function listenAny(notifier: EventNotifier, keys: readonly string[], timeoutMs: number, signal?: AbortSignal): Listening {
  return notifier.listenAny(keys, timeoutMs, signal);
}
