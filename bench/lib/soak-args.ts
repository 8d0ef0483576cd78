import { parseArgs } from "node:util";
import { ENGINE_RUN_CACHE_ROWS } from "../../src/history/engine";

/** The command line of bench/soak.ts. */
export interface SoakArgs {
  /** Seconds of paced load on A. */
  seconds: number;
  /** Paced write rate on A, ops/s: one this 2-core machine sustains (the replication bench's 500 saturates it). */
  rate: number;
  clients: number;
  /** Seconds between two readings of the servers' memory. */
  sampleSeconds: number;
  /**
   * Runs started on A before the soak, as fast as it takes them, so the servers' run caches are
   * full when the readings start: their filling is growth with a bound, not a leak. 0: none.
   */
  fillRuns: number;
}

const USAGE = "usage: bun bench/soak.ts [--seconds 300] [--rate 150] [--clients 16] [--sample-seconds 5] [--fill-runs N|0]";
const FLAGS = { seconds: "seconds", rate: "rate", clients: "clients", "sample-seconds": "sampleSeconds", "fill-runs": "fillRuns" } as const;

/** Parses `--flag value` and `--flag=value`; throws with the usage line on bad input. */
export function parseSoakArgs(argv: readonly string[]): SoakArgs {
  const args: SoakArgs = { seconds: 300, rate: 150, clients: 16, sampleSeconds: 5, fillRuns: ENGINE_RUN_CACHE_ROWS };
  let values: Record<string, string | boolean | undefined>;
  try {
    const options = Object.fromEntries(Object.keys(FLAGS).map((f) => [f, { type: "string" as const }]));
    ({ values } = parseArgs({ args: [...argv], options: { ...options, help: { type: "boolean", short: "h" } }, strict: true, allowPositionals: false }));
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${USAGE}`);
  }
  if (values.help) throw new Error(USAGE);
  for (const [flag, key] of Object.entries(FLAGS)) {
    const value = values[flag];
    if (typeof value !== "string") continue;
    const n = Number(value);
    if (key === "fillRuns" && value.trim() !== "" && n === 0) {
      args.fillRuns = 0;
      continue;
    }
    if (value.trim() === "" || !Number.isFinite(n) || n <= 0) throw new Error(`--${flag}: ${JSON.stringify(value)} is not a positive number\n${USAGE}`);
    if ((key === "clients" || key === "fillRuns") && !Number.isInteger(n)) throw new Error(`--${flag}: ${JSON.stringify(value)} is not a whole number\n${USAGE}`);
    args[key] = n;
  }
  if (args.sampleSeconds > args.seconds) throw new Error(`--sample-seconds ${args.sampleSeconds} is longer than the run (--seconds ${args.seconds})\n${USAGE}`);
  return args;
}
