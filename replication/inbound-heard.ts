import { remoteFailureText } from "../src/cluster/remote-client";

/** How long past the interval it promised a source may be late before what it last said is taken as stale. */
export const OVERDUE_SLACK_MS = 2_000;

/** What this process knows of a remote on one inbound stream, for status. */
export interface Heard {
  /** When the remote last answered on the stream; unset if not since this server started. */
  at?: Date;
  /** Too long ago to know the remote's lag: what it wrote since may not be seen here. */
  stale: boolean;
  /** Why the stream's calls fail, while they do. */
  error?: string;
}

export interface InboundHeardOptions {
  /** The source answers at least this often while the stream is well (its long poll's wait). */
  everyMs: number;
  /**
   * How old what was heard may be before it is stale once the stream's calls fail (the source
   * being overdue makes it stale too). 0 (history's): as soon as a call fails.
   */
  staleAfterMs?: number;
  now?: () => number;
}

/**
 * When each remote last answered on one inbound stream (history's, namespace replication's),
 * and how its calls have failed since. What was heard goes stale once the source is past the
 * interval it promised and OVERDUE_SLACK_MS, or once a call failed and it is older than
 * staleAfterMs. A quiet long poll (nothing to send) is not a failure; the next answer clears one.
 */
export function createInboundHeard({ everyMs, staleAfterMs = everyMs + OVERDUE_SLACK_MS, now = Date.now }: InboundHeardOptions) {
  const heardAt = new Map<string, number>();
  const errors = new Map<string, string>();
  return {
    staleAfterMs,
    /** remote answered: what it said is current. */
    heard(remote: string): void {
      heardAt.set(remote, now());
      errors.delete(remote);
    },
    /** A call to remote failed: unanswered, or answered with an error (said to be remote's). */
    failed(remote: string, error: unknown): void {
      errors.set(remote, remoteFailureText(remote, error));
    },
    of(remote: string): Heard {
      const at = heardAt.get(remote);
      const error = errors.get(remote);
      if (at === undefined) return { stale: true, error };
      const quietMs = now() - at;
      const overdue = quietMs > everyMs + OVERDUE_SLACK_MS;
      return { at: new Date(at), stale: overdue || (error !== undefined && quietMs >= staleAfterMs), error };
    },
  };
}

export type InboundHeard = ReturnType<typeof createInboundHeard>;
