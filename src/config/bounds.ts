/** Which side of a value its bound is, and whether the bound itself is allowed. */
export interface Bound {
  /** The bound as told: a number, or a number with where it comes from, `2000 (replication.retry.maxBackoffMs)`. */
  bound: number | string;
  upper: boolean;
  inclusive: boolean;
}

/**
 * A config value past its bound, the value given first: `0 is below the least, 1`, `5000 is above
 * the most, 1000`, `100 is not below 100 (failoverVersionIncrement)`. The one wording of the schema's
 * bounds (load.ts) and of the rules across keys (validate.ts).
 */
export function pastBound(value: number, { bound, upper, inclusive }: Bound): string {
  if (inclusive) return `${value} is ${upper ? "above the most" : "below the least"}, ${bound}`;
  return `${value} is not ${upper ? "below" : "above"} ${bound}`;
}
