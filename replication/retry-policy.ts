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
