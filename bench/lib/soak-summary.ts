import { percentile } from "./percentiles";

/** One reading of a server's resident memory during the soak. */
export interface RssSample {
  /** Seconds since the load started. */
  t: number;
  rssMb: number;
}

/** Last minute's median within this fraction of the first minute after warm-up. */
export const FLAT_DRIFT = 0.1;
/** And a least-squares slope under this many MB per minute after warm-up. */
export const FLAT_SLOPE_MB_PER_MIN = 2;

export interface RssVerdict {
  warmupS: number;
  firstMinuteMedianMb: number;
  lastMinuteMedianMb: number;
  /** Lowest readings of those minutes: the floor a garbage collection returns to (not part of the verdict). */
  firstMinuteFloorMb: number;
  lastMinuteFloorMb: number;
  driftRatio: number;
  slopeMbPerMin: number;
  flat: boolean;
}

const median = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 50);

/**
 * Whether RSS stayed flat: the first 60 s (or first 20% of a shorter run) are warm-up
 * (caches, prepared statements, JIT); after them the last minute's median must be within
 * FLAT_DRIFT of the first minute's, and the fitted slope under FLAT_SLOPE_MB_PER_MIN.
 */
export function rssVerdict(samples: readonly RssSample[], durationS: number): RssVerdict {
  const warmupS = Math.min(60, durationS * 0.2);
  const after = samples.filter((s) => s.t >= warmupS);
  if (after.length < 2) throw new Error(`too few samples after the ${warmupS}s warm-up to judge RSS`);
  const first = after.filter((s) => s.t < warmupS + 60).map((s) => s.rssMb);
  const last = after.filter((s) => s.t > durationS - 60).map((s) => s.rssMb);
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
