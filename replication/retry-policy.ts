/** How often and how patiently a failing task is retried before it goes to the DLQ. */
export interface RetryPolicy {
  /** Attempts in all (the last failure sends the task to the DLQ). */
  attempts: number;
  /** The first wait between attempts, doubled at each up to maxBackoffMs. */
  backoffMs: number;
  maxBackoffMs: number;
}

/** The retry budget where neither the config (replication.retry) nor the code sets one. */
export const DEFAULT_RETRY_POLICY: RetryPolicy = { attempts: 5, backoffMs: 200, maxBackoffMs: 2_000 };

/**
 * The policy of what is given, the defaults for the rest: a maxBackoffMs given alone below the
 * default first wait caps that too, as a longest wait asked for is the longest waited.
 */
export function retryPolicy(given: Partial<RetryPolicy> = {}): RetryPolicy {
  const maxBackoffMs = given.maxBackoffMs ?? DEFAULT_RETRY_POLICY.maxBackoffMs;
  const backoffMs = given.backoffMs ?? Math.min(DEFAULT_RETRY_POLICY.backoffMs, maxBackoffMs);
  return { attempts: given.attempts ?? DEFAULT_RETRY_POLICY.attempts, backoffMs, maxBackoffMs };
}
