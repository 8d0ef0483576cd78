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
      const key = withoutRequestIds(message);
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

/**
 * text with each request id it names left out ("request id X" becomes "request id"): a remote's
 * error, or an answer to a client, names one new on every request, though the failure is the same.
 */
export function withoutRequestIds(text: string): string {
  return text.replace(/request id [^)";]+/g, "request id");
}
