import { connectionLost, pgErrorOf } from "../errors";
import type { Logger } from "../observability/log";
import { sleep } from "../sleep";

/** What connectWithin needs: how long to go on, and where to say that it waits. */
export interface ConnectWait {
  /** How long to keep trying, ms; 0 fails at the first refusal (the default). */
  waitMs: number;
  /** The setting that asked for the wait, named in the log lines. */
  setting: string;
  log?: Logger;
  /** The database, as log lines and the error name it (no password). */
  target: string;
  /** Ends the wait (a stop signal during the start): the attempt in flight and the pause, rejecting with its reason. */
  signal?: AbortSignal;
  /** Test hooks. */
  now?: () => number;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

/** The first retry's delay; each next one doubles, up to MAX_DELAY_MS. */
const FIRST_DELAY_MS = 100;
const MAX_DELAY_MS = 2_000;
/** A wait is said when it starts, then once per this long. */
const SAY_EVERY_MS = 10_000;
/** The least time an attempt is given, however little of the wait is left. */
const MIN_ATTEMPT_MS = 1_000;

/**
 * Runs attempt until it succeeds; while the database cannot be reached yet (nothing listens,
 * the host does not resolve, PostgreSQL still starting) and waitMs is not over, tries again
 * with a growing delay. A refusal that waiting cannot mend (a wrong password, no such
 * database) fails at once; when the time is up, the last attempt's error, saying how long it tried.
 * While waiting, attempt is told how long it may take (the wait's time left, at least
 * MIN_ATTEMPT_MS), so that one attempt does not carry the wait past its end; without a wait, nothing.
 */
export async function connectWithin<T>(attempt: (withinMs?: number) => Promise<T>, wait: ConnectWait): Promise<T> {
  const now = wait.now ?? (() => performance.now());
  const pause = wait.sleep ?? sleep;
  const started = now();
  let delay = FIRST_DELAY_MS;
  let attempts = 0;
  let saidAt: number | undefined;
  for (;;) {
    attempts++;
    try {
      const result = await attempt(wait.waitMs > 0 ? Math.max(wait.waitMs - (now() - started), MIN_ATTEMPT_MS) : undefined);
      if (saidAt !== undefined) wait.log?.info("database reachable", { database: wait.target, waitedMs: Math.round(now() - started), attempts });
      return result;
    } catch (e) {
      wait.signal?.throwIfAborted();
      const waited = now() - started;
      if (!notUpYet(e)) throw e;
      if (waited >= wait.waitMs) {
        if (wait.waitMs <= 0) throw e;
        throw new Error(`${(e as Error).message} (${attempts} attempt${attempts === 1 ? "" : "s"} in ${Math.round(waited)} ms; ${wait.setting} is ${wait.waitMs} ms)`, { cause: e });
      }
      if (saidAt === undefined || now() - saidAt >= SAY_EVERY_MS) {
        saidAt = now();
        wait.log?.warn("waiting for the database", {
          database: wait.target, error: (e as Error).message, waitedMs: Math.round(waited), attempts, waitMs: wait.waitMs, setting: wait.setting,
        });
      }
    }
    // The last attempt at the deadline, not a delay's length before it.
    await pause(Math.min(delay, wait.waitMs - (now() - started)), wait.signal);
    wait.signal?.throwIfAborted();
    delay = Math.min(delay * 2, MAX_DELAY_MS);
  }
}

/**
 * Whether a failed connection may succeed later: the connection could not be made or was
 * ended (connectionLost), but not a refusal of who asked or for what: authorization (class 28)
 * and an unknown database (3D000) fail the same way however long one waits.
 */
function notUpYet(e: unknown): boolean {
  const { code } = pgErrorOf(e);
  if (code && (code.startsWith("28") || code === "3D000")) return false;
  return connectionLost(e);
}
