/**
 * Which failures of a retried call to log: each once, not per retry, until a call succeeds.
 * Failures are told apart by message without the request id a remote's error names, which is
 * new on every retry.
 */
export function createFailureLog() {
  let last: string | undefined;
  let failingSince: number | undefined;
  return {
    /** Whether message is a failure other than the last one logged (and remembers it). */
    isNew(message: string): boolean {
      const key = message.replace(/ ?\(request id [^)]*\)/g, "");
      const isNew = key !== last;
      last = key;
      failingSince ??= performance.now();
      return isNew;
    },
    /** A call succeeded; when it ends failures, for how long (ms) they went on since the first. */
    succeeded(): number | undefined {
      const failedForMs = failingSince === undefined ? undefined : performance.now() - failingSince;
      last = failingSince = undefined;
      return failedForMs;
    },
  };
}
