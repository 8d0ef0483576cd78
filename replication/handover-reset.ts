import type { Logger } from "../src/observability/log";
import type { Db } from "../src/persistence/database";
import { createPeriodic } from "../src/periodic";
import { resetAbandonedHandovers } from "./failover";

/** How soon a pass runs once a HANDOVER was seen, and how often while one keeps being seen. */
export const HANDOVER_SEEN_RESET_MS = 2_000;
/** How often a pass runs with no HANDOVER seen (a killed issuer's that nobody reads). */
export const HANDOVER_IDLE_RESET_MS = 30_000;

export interface HandoverResetDeps {
  db: Db;
  log: Logger;
  /** After a pass that reset namespaces (their cached records are stale). */
  onReset: (names: string[]) => void;
  /** The pass's interval while no HANDOVER was seen (default HANDOVER_IDLE_RESET_MS). */
  idleMs?: number;
}

/**
 * The periodic resetAbandonedHandovers of a PostgreSQL database that several servers may share:
 * a HANDOVER whose failover's server died is put back to NORMAL by the others. It ran every 2 s
 * whatever the namespaces held, an idle pair's 1 transaction a second of 5.6, for a state that
 * exists only during a graceful failover. Now a pass comes within HANDOVER_SEEN_RESET_MS of
 * `seen` (this process read a namespace in HANDOVER: the writes and reads that wait on it, and
 * a failover here that could not leave it), and every idleMs otherwise.
 */
export function createHandoverReset({ db, log, onReset, idleMs = HANDOVER_IDLE_RESET_MS }: HandoverResetDeps) {
  /** A HANDOVER was seen since the last pass that went through. */
  let seen = false;
  const periodic = createPeriodic(async () => {
    const wasSeen = seen;
    seen = false;
    try {
      return await resetAbandonedHandovers(db, log);
    } catch (e) {
      seen ||= wasSeen;
      throw e;
    }
  }, {
    name: "abandoned handover reset", log, intervalMs: () => (seen ? HANDOVER_SEEN_RESET_MS : idleMs),
    onDone: (reset) => reset.length && onReset(reset),
  });
  return {
    start: periodic.start,
    stop: periodic.stop,
    /** A namespace was found in HANDOVER: a pass within HANDOVER_SEEN_RESET_MS, and on while it is seen. */
    seen(): void {
      seen = true;
      periodic.soon(HANDOVER_SEEN_RESET_MS);
    },
  };
}

export type HandoverReset = ReturnType<typeof createHandoverReset>;
