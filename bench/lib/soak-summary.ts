import { percentile } from "./percentiles";
import type { GoalResult } from "./replication-report";

/** One reading of both servers, taken every --sample-seconds while the load runs. */
export interface SoakSample {
  /** Seconds since the load started. */
  t: number;
  /** VmRSS and VmHWM (peak) of each server process, MB. */
  aRssMb: number;
  aPeakMb: number;
  bRssMb: number;
  bPeakMb: number;
  /** Writes A acknowledged so far. */
  aAckedOps: number;
  /** History events in B's database so far (every one applied from A). */
  bEvents: number;
}

/** One server's resident memory at one time. */
export interface RssSample {
  /** Seconds since the load started. */
  t: number;
  rssMb: number;
}

/** Not judged: the first WARMUP_S seconds, or WARMUP_SHARE of a shorter run (connections, prepared statements, JIT and caches fill then). */
export const WARMUP_S = 60;
export const WARMUP_SHARE = 0.2;
/**
 * Flat: the last minute's median RSS within FLAT_DRIFT of the first minute's after warm-up
 * (a median rides out the GC sawtooth, which moves single readings by tens of MB), and the
 * least-squares slope after warm-up under FLAT_SLOPE_MB_PER_MIN (2 MB/min is ~2.9 GB a day:
 * a leak that matters shows within five minutes).
 */
export const FLAT_DRIFT = 0.1;
export const FLAT_SLOPE_MB_PER_MIN = 2;

/** How one server's RSS moved after the warm-up. */
export interface RssVerdict {
  warmupS: number;
  firstMinuteMedianMb: number;
  lastMinuteMedianMb: number;
  /** Lowest readings of those minutes: the floor a collection returns to (not part of the verdict). */
  firstMinuteFloorMb: number;
  lastMinuteFloorMb: number;
  driftRatio: number;
  slopeMbPerMin: number;
  flat: boolean;
}

const median = (xs: readonly number[]) => percentile([...xs].sort((a, b) => a - b), 50);

/** Seconds of warm-up in a run of durationS. */
export const warmupOf = (durationS: number): number => Math.min(WARMUP_S, durationS * WARMUP_SHARE);

/**
 * Whether RSS stayed flat: after the warm-up, the median of the last minute of the run
 * against that of the first minute, and the fitted slope. Null when too few samples fall
 * after the warm-up to judge.
 */
export function rssVerdict(samples: readonly RssSample[], durationS: number): RssVerdict | null {
  const warmupS = warmupOf(durationS);
  const after = samples.filter((s) => s.t >= warmupS);
  const first = after.filter((s) => s.t < warmupS + 60).map((s) => s.rssMb);
  const last = after.filter((s) => s.t >= durationS - 60).map((s) => s.rssMb);
  if (after.length < 2 || first.length === 0 || last.length === 0) return null;
  const firstMinuteMedianMb = median(first);
  const lastMinuteMedianMb = median(last);
  const slopeMbPerMin = slope(after) * 60;
  const driftRatio = lastMinuteMedianMb / firstMinuteMedianMb;
  return {
    warmupS, firstMinuteMedianMb, lastMinuteMedianMb, firstMinuteFloorMb: Math.min(...first), lastMinuteFloorMb: Math.min(...last), driftRatio, slopeMbPerMin,
    flat: Math.abs(driftRatio - 1) <= FLAT_DRIFT && slopeMbPerMin < FLAT_SLOPE_MB_PER_MIN,
  };
}

/** Least-squares slope of rssMb over t, MB per second. */
function slope(samples: readonly RssSample[]): number {
  const n = samples.length;
  const mt = samples.reduce((a, s) => a + s.t, 0) / n;
  const mr = samples.reduce((a, s) => a + s.rssMb, 0) / n;
  const num = samples.reduce((a, s) => a + (s.t - mt) * (s.rssMb - mr), 0);
  const den = samples.reduce((a, s) => a + (s.t - mt) ** 2, 0);
  return den === 0 ? 0 : num / den;
}

/** A server's verdict as a goal line (N/A without one). */
export function rssGoal(server: string, v: RssVerdict | null): GoalResult {
  const goal = `RSS of ${server} flat after the warm-up`;
  if (!v) return { goal, verdict: "N/A", detail: "too few samples after the warm-up" };
  const pct = ((v.driftRatio - 1) * 100).toFixed(1);
  return {
    goal,
    verdict: v.flat ? "PASS" : "MISS",
    detail: `median ${v.firstMinuteMedianMb.toFixed(0)} MB in the first minute after ${v.warmupS}s, ${v.lastMinuteMedianMb.toFixed(0)} MB in the last ` +
      `(${pct}%, limit ±${FLAT_DRIFT * 100}%); slope ${v.slopeMbPerMin.toFixed(2)} MB/min (limit ${FLAT_SLOPE_MB_PER_MIN}); ` +
      `lowest reading ${v.firstMinuteFloorMb.toFixed(0)} -> ${v.lastMinuteFloorMb.toFixed(0)} MB`,
  };
}

/** One minute of the run: median RSS of each server, A's acked ops/s and B's applied events/s. */
export interface MinuteRow {
  /** 1 for [0, 60) s; a last reading at or past the run's end counts in the last minute. */
  minute: number;
  aRssMb: number;
  bRssMb: number;
  aOpsPerSec: number;
  bEventsPerSec: number;
}

/** Samples by minute; rates run from the previous minute's last sample to this one's last. */
export function perMinute(samples: readonly SoakSample[], durationS: number): MinuteRow[] {
  const lastMinute = Math.max(0, Math.ceil(durationS / 60) - 1);
  const rows: MinuteRow[] = [];
  let prev: SoakSample | undefined;
  for (let m = 0; m <= lastMinute; m++) {
    const inMinute = samples.filter((s) => Math.min(Math.floor(s.t / 60), lastMinute) === m);
    if (inMinute.length === 0) continue;
    const from = prev ?? inMinute[0]!;
    const to = inMinute.at(-1)!;
    const rate = (d: number) => (to.t > from.t ? d / (to.t - from.t) : Number.NaN);
    rows.push({
      minute: m + 1, aRssMb: median(inMinute.map((s) => s.aRssMb)), bRssMb: median(inMinute.map((s) => s.bRssMb)),
      aOpsPerSec: rate(to.aAckedOps - from.aAckedOps), bEventsPerSec: rate(to.bEvents - from.bEvents),
    });
    prev = to;
  }
  return rows;
}

/** The minutes as a plain-text table. */
export function formatMinutes(rows: readonly MinuteRow[]): string {
  const cell = (v: number, width: number) => (Number.isFinite(v) ? v.toFixed(0) : "-").padStart(width);
  return [
    "minute  RSS A MB  RSS B MB  A acked ops/s  B applied events/s",
    ...rows.map((r) => `${cell(r.minute, 6)}  ${cell(r.aRssMb, 8)}  ${cell(r.bRssMb, 8)}  ${cell(r.aOpsPerSec, 13)}  ${cell(r.bEventsPerSec, 18)}`),
  ].join("\n");
}
