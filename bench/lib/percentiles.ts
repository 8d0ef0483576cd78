/** Latency summary of one load phase, milliseconds. */
export interface LatencySummary {
  count: number;
  min: number;
  mean: number;
  p50: number;
  p99: number;
  max: number;
}

/**
 * The p-th percentile of ascending `sorted` by the nearest-rank method: the smallest
 * sample with at least p% of the samples at or below it. NaN for no samples.
 */
export function percentile(sorted: readonly number[], p: number): number {
  if (p < 0 || p > 100 || Number.isNaN(p)) throw new RangeError(`percentile ${p} is outside 0..100`);
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1]!;
}

/** The middle value of xs; the mean of the two middle ones for an even count; NaN for none. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Sorts a copy of the samples and summarizes them. */
export function summarize(samples: readonly number[]): LatencySummary {
  const sorted = Float64Array.from(samples).sort();
  const values = Array.from(sorted);
  const sum = values.reduce((a, b) => a + b, 0);
  return {
    count: values.length,
    min: values.length ? values[0]! : Number.NaN,
    mean: values.length ? sum / values.length : Number.NaN,
    p50: percentile(values, 50),
    p99: percentile(values, 99),
    max: values.length ? values.at(-1)! : Number.NaN,
  };
}
