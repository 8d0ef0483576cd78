/**
 * Which failures of a retried call to log: each once, not per retry, until a call succeeds.
 * Failures are told apart by message without the request id a remote's error names, which is
 * new on every retry.
 */
export function createFailureLog() {
  let last: string | undefined;
  return {
    /** Whether message is a failure other than the last one logged (and remembers it). */
    isNew(message: string): boolean {
      const key = message.replace(/ ?\(request id [^)]*\)/g, "");
      const isNew = key !== last;
      last = key;
      return isNew;
    },
    /** A call succeeded; whether it ends failures (one was logged since the last success). */
    succeeded(): boolean {
      const failing = last !== undefined;
      last = undefined;
      return failing;
    },
  };
}
