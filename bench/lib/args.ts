/** Which stores a bench run covers. */
export type StoreChoice = "pglite" | "postgres" | "both";

/** The bench's command line. */
export interface BenchArgs {
  /** Measured seconds per phase (after warm-up). */
  durationS: number;
  store: StoreChoice;
  /** Concurrent client counts, one phase each. */
  clients: number[];
}

const USAGE = "usage: bun bench/single-cluster.ts [--duration SECONDS] [--store pglite|postgres|both] [--clients 1,8,32]";

/** Parses `--flag value` and `--flag=value` forms; throws with the usage line on bad input. */
export function parseArgs(argv: readonly string[]): BenchArgs {
  const args: BenchArgs = { durationS: 5, store: "both", clients: [1, 8, 32] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--help" || arg === "-h") throw new Error(USAGE);
    const eq = arg.indexOf("=");
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
    if (flag === "--duration") args.durationS = positive(flag, value);
    else if (flag === "--store") args.store = storeChoice(value);
    else if (flag === "--clients") args.clients = value.split(",").map((v) => Math.round(positive(flag, v)));
    else throw new Error(`unknown flag ${flag}\n${USAGE}`);
  }
  return args;
}

function positive(flag: string, value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${flag}: ${JSON.stringify(value)} is not a positive number\n${USAGE}`);
  return n;
}

function storeChoice(value: string): StoreChoice {
  if (value === "pglite" || value === "postgres" || value === "both") return value;
  throw new Error(`--store: ${JSON.stringify(value)} is not one of pglite, postgres, both\n${USAGE}`);
}
