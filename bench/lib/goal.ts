import { BASELINE_OP, type ResultRow } from "./report";

/** The target: PostgreSQL signals/s at this many clients >= this share of the baseline. */
export const GOAL = { clients: 32, minRatio: 0.25 } as const;

export interface GoalVerdict {
  verdict: "PASS" | "MISS" | "N/A";
  ratio: number | null;
  signalsPerSec: number | null;
  baselinePerSec: number | null;
  reason: string;
}

/** Checks the goal on the results; N/A when PostgreSQL or the 32-client phase did not run. */
export function evaluateGoal(rows: readonly ResultRow[]): GoalVerdict {
  const find = (op: string) => rows.find((r) => r.store === "postgres" && r.op === op && r.clients === GOAL.clients);
  const signal = find("signal");
  const baseline = find(BASELINE_OP);
  if (!signal || !baseline || baseline.opsPerSec <= 0) {
    return { verdict: "N/A", ratio: null, signalsPerSec: null, baselinePerSec: null, reason: `needs PostgreSQL signal and baseline phases at ${GOAL.clients} clients` };
  }
  const ratio = signal.opsPerSec / baseline.opsPerSec;
  return {
    verdict: ratio >= GOAL.minRatio ? "PASS" : "MISS",
    ratio,
    signalsPerSec: signal.opsPerSec,
    baselinePerSec: baseline.opsPerSec,
    reason: `signals/s at ${GOAL.clients} clients must be >= ${GOAL.minRatio * 100}% of raw inserts/s at ${GOAL.clients}`,
  };
}
