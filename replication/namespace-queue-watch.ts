import type { EventNotifier } from "../src/history/notifier";

/**
 * The namespace queue's max as another read of this process last found it (the history
 * sender's idle re-read, page-reader.ts MARKS_TEXT, reads it each recheckMs). The namespace
 * sender's long polls re-read the queue each pollMs for commits of other processes; a read
 * here since their last tick that found nothing past them spares that re-read, and one that
 * finds the max moved wakes them (notified with key), so a commit elsewhere comes as soon.
 */
export interface NamespaceQueueWatch {
  /** A read that began at startedAt (Date.now()) found the queue's max. */
  seen(max: number, startedAt: number): void;
  /** The last read's find, if it began after since. */
  seenAfter(since: number): { max: number; at: number } | undefined;
}

/** Creates the watch; a max that moved since the last read notifies key on notifier. */
export function createNamespaceQueueWatch(notifier: EventNotifier, key: string): NamespaceQueueWatch {
  let last: { max: number; at: number } | undefined;
  return {
    seen(max, startedAt) {
      if (last && startedAt < last.at) return;
      const moved = last?.max !== max;
      last = { max, at: startedAt };
      if (moved) notifier.notify(key);
    },
    seenAfter: (since) => (last && last.at > since ? last : undefined),
  };
}
