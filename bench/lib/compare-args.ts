import { parseArgs } from "node:util";

/** The command line of bench/compare.ts. */
export interface CompareArgs {
  /** Git revision whose servers are the baseline (this checkout's are the candidate). */
  base: string;
  /** Runs of each side, in ABBA order, base first (an even count balances a steady drift exactly). */
  pairs: number;
  /** Steady write rate on A, ops/s. */
  rate: number;
  clients: number;
  /** Seconds of each measured steady phase. */
  durationS: number;
  /** Seconds of the same load before each measurement. */
  warmupS: number;
  shards: number;
  /** Both sides on a PostgreSQL instance started for the run (track_commit_timestamp=on): lag from A's commit. */
  ownPostgres: boolean;
  /** Variables set in the head side's servers' environment only (`--head-env K=V`, repeatable): runtime settings compared on the same code. */
  headEnv: Record<string, string>;
}

const USAGE =
  "usage: bun bench/compare.ts --base REV [--pairs 4] [--rate 500] [--clients 32] [--duration 10] [--warmup-seconds 3] [--shards 4] [--own-postgres] [--head-env NAME=VALUE ...]";
const NUMBERS = { pairs: "pairs", rate: "rate", clients: "clients", duration: "durationS", "warmup-seconds": "warmupS", shards: "shards" } as const;

/** Parses `--flag value` and `--flag=value`; throws with the usage line on bad input. */
export function parseCompareArgs(argv: readonly string[]): CompareArgs {
  const args: CompareArgs = { base: "", pairs: 4, rate: 500, clients: 32, durationS: 10, warmupS: 3, shards: 4, ownPostgres: false, headEnv: {} };
  let values: Record<string, string | boolean | string[] | undefined>;
  try {
    const options = Object.fromEntries(["base", ...Object.keys(NUMBERS)].map((f) => [f, { type: "string" as const }]));
    ({ values } = parseArgs({ args: [...argv], options: { ...options, "own-postgres": { type: "boolean" }, "head-env": { type: "string", multiple: true }, help: { type: "boolean", short: "h" } }, strict: true, allowPositionals: false }));
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${USAGE}`);
  }
  if (values.help) throw new Error(USAGE);
  if (typeof values.base !== "string" || !values.base) throw new Error(`--base is required: the revision to compare this checkout against\n${USAGE}`);
  args.base = values.base;
  args.ownPostgres = values["own-postgres"] === true;
  for (const pair of (values["head-env"] as string[] | undefined) ?? []) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(pair);
    if (!m) throw new Error(`--head-env: ${JSON.stringify(pair)} is not NAME=VALUE\n${USAGE}`);
    args.headEnv[m[1]!] = m[2]!;
  }
  for (const [flag, key] of Object.entries(NUMBERS)) {
    const value = values[flag];
    if (typeof value !== "string") continue;
    const n = Number(value);
    const whole = key === "pairs" || key === "clients" || key === "shards";
    if (!Number.isFinite(n) || n <= 0 || (whole && !Number.isInteger(n))) {
      throw new Error(`--${flag}: ${JSON.stringify(value)} is not a positive ${whole ? "whole " : ""}number\n${USAGE}`);
    }
    args[key] = n;
  }
  return args;
}

/**
 * Which side runs when: base, head, head, base, base, head, ... A machine that drifts
 * steadily over the runs then weighs on both sides alike.
 */
export function runOrder(pairs: number): ("base" | "head")[] {
  return Array.from({ length: pairs }, (_, i) => (i % 2 === 0 ? ["base", "head"] as const : ["head", "base"] as const)).flat();
}
