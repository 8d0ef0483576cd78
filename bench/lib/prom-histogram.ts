/** A Prometheus histogram summed over the series that matched: cumulative bucket counts. */
export interface Histogram {
  /** Upper bounds (seconds), ascending, ending with Infinity. */
  le: number[];
  /** Cumulative counts per bound. */
  cumulative: number[];
  count: number;
  sum: number;
}

const LINE = /^(\w+?)(_bucket|_sum|_count)(\{[^}]*\})?\s+(\S+)/;

/**
 * Reads histogram `name` from a /metrics body, summing every series whose labels
 * contain all of `match` (e.g. `{ remote_cluster: "clusterA" }`).
 */
export function parseHistogram(text: string, name: string, match: Record<string, string> = {}): Histogram {
  const byLe = new Map<number, number>();
  let count = 0;
  let sum = 0;
  for (const line of text.split("\n")) {
    const m = LINE.exec(line);
    if (!m || m[1] !== name) continue;
    const labels = labelsOf(m[3]);
    if (!matches(labels, match)) continue;
    const value = Number(m[4]);
    if (m[2] === "_count") count += value;
    else if (m[2] === "_sum") sum += value;
    else {
      const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
      byLe.set(le, (byLe.get(le) ?? 0) + value);
    }
  }
  const le = [...byLe.keys()].sort((a, b) => a - b);
  return { le, cumulative: le.map((b) => byLe.get(b)!), count, sum };
}

const COUNTER = /^(\w+)(\{[^}]*\})?\s+(\S+)/;

/** Counter (or gauge) `name` from a /metrics body, summed over every series whose labels contain all of `match`; 0 if none. */
export function parseCounter(text: string, name: string, match: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split("\n")) {
    const m = COUNTER.exec(line);
    if (m && m[1] === name && matches(labelsOf(m[2]), match)) total += Number(m[3]);
  }
  return total;
}

const labelsOf = (braced: string | undefined): Record<string, string> =>
  Object.fromEntries([...(braced ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1]!, l[2]!]));
const matches = (labels: Record<string, string>, match: Record<string, string>) => Object.entries(match).every(([k, v]) => labels[k] === v);

/** after − before, bucket by bucket: the observations made between two scrapes. */
export function diffHistogram(after: Histogram, before: Histogram): Histogram {
  const prev = new Map(before.le.map((b, i) => [b, before.cumulative[i]!]));
  return {
    le: after.le,
    cumulative: after.le.map((b, i) => after.cumulative[i]! - (prev.get(b) ?? 0)),
    count: after.count - before.count,
    sum: after.sum - before.sum,
  };
}

/**
 * The q-quantile (0..1) as Prometheus' histogram_quantile computes it: linear within the
 * bucket that holds the rank, lower bound 0 for the first; the highest finite bound when
 * the rank falls in +Inf. NaN when the histogram is empty.
 */
export function histogramQuantile(h: Histogram, q: number): number {
  const total = h.cumulative.at(-1) ?? 0;
  if (total <= 0) return Number.NaN;
  const rank = q * total;
  for (let i = 0; i < h.le.length; i++) {
    if (h.cumulative[i]! < rank) continue;
    const upper = h.le[i]!;
    const lower = i === 0 ? 0 : h.le[i - 1]!;
    if (upper === Infinity) return lower;
    const below = i === 0 ? 0 : h.cumulative[i - 1]!;
    const inBucket = h.cumulative[i]! - below;
    return inBucket > 0 ? lower + (upper - lower) * ((rank - below) / inBucket) : upper;
  }
  return h.le.filter(Number.isFinite).at(-1) ?? Number.NaN;
}

/** How many observations lie above `bound`, one of the histogram's bucket bounds (0 when it has no such bucket, as an empty histogram has none). */
export function histogramAbove(h: Histogram, bound: number): number {
  return h.count - (h.cumulative[h.le.indexOf(bound)] ?? h.count);
}

/** The smallest bucket bound with every observation at or below it (an upper bound of the max). */
export function histogramMaxBound(h: Histogram): number {
  const total = h.cumulative.at(-1) ?? 0;
  if (total <= 0) return Number.NaN;
  const i = h.cumulative.findIndex((c) => c >= total);
  return h.le[i]!;
}
