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
