import { create } from "@bufbuild/protobuf";
import { type Duration, DurationSchema } from "@bufbuild/protobuf/wkt";
import { UsageError } from "./errors";

const NANOS_PER_SECOND = 1_000_000_000n;

/** Nanoseconds per unit; the units operators use with Temporal (Go syntax plus days). */
const UNIT_NANOS: Record<string, bigint> = {
  ns: 1n,
  us: 1_000n,
  µs: 1_000n,
  ms: 1_000_000n,
  s: NANOS_PER_SECOND,
  m: 60n * NANOS_PER_SECOND,
  h: 3600n * NANOS_PER_SECOND,
  d: 86_400n * NANOS_PER_SECOND,
};

const PART = /(\d+)(?:\.(\d+))?(ns|us|µs|ms|s|m|h|d)/y;

/** Parses `72h`, `30s`, `1m30s`, `500ms`, `1.5h`, `3d` into nanoseconds; throws UsageError naming the flag. */
export function parseDurationNanos(text: string, flag = "duration"): bigint {
  const bad = () =>
    new UsageError(`--${flag}: invalid duration "${text}" (use e.g. 30s, 1m30s, 72h, 3d, 500ms)`);
  if (text === "0") return 0n;
  if (text.length === 0) throw bad();
  let total = 0n;
  PART.lastIndex = 0;
  while (PART.lastIndex < text.length) {
    const match = PART.exec(text);
    if (!match) throw bad();
    const [, whole, fraction = "", unit] = match;
    const perUnit = UNIT_NANOS[unit!]!;
    total += BigInt(whole!) * perUnit;
    if (fraction) total += (BigInt(fraction) * perUnit) / 10n ** BigInt(fraction.length);
  }
  if (total > MAX_NANOS) throw new UsageError(`--${flag}: duration "${text}" is over 10,000 years, the most a duration holds`);
  return total;
}

/** google.protobuf.Duration's range: 315,576,000,000 seconds (10,000 years). */
const MAX_NANOS = 315_576_000_000n * NANOS_PER_SECOND;

/** Parses a duration flag value into a google.protobuf.Duration. */
export function parseDuration(text: string, flag = "duration"): Duration {
  const nanos = parseDurationNanos(text, flag);
  return create(DurationSchema, {
    seconds: nanos / NANOS_PER_SECOND,
    nanos: Number(nanos % NANOS_PER_SECOND),
  });
}

/** Renders a Duration the way it is typed: `72h`, `1m30s`, `500ms`, `0s`. */
export function formatDuration(d: Duration | undefined): string {
  if (!d) return "";
  let nanos = d.seconds * NANOS_PER_SECOND + BigInt(d.nanos);
  if (nanos === 0n) return "0s";
  const sign = nanos < 0n ? "-" : "";
  if (nanos < 0n) nanos = -nanos;
  let out = "";
  for (const unit of ["h", "m", "s", "ms", "us", "ns"]) {
    const size = UNIT_NANOS[unit]!;
    if (nanos >= size) {
      out += `${nanos / size}${unit}`;
      nanos %= size;
    }
  }
  return sign + out;
}

/** Milliseconds (as in *_ms proto fields) rendered like formatDuration; 0 renders as "none". */
export function formatMillis(ms: bigint | number): string {
  const n = BigInt(ms);
  if (n === 0n) return "none";
  return formatDuration(create(DurationSchema, { seconds: n / 1000n, nanos: Number(n % 1000n) * 1_000_000 }));
}
