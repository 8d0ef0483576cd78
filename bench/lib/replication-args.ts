/** The command line of bench/replication.ts. */
export interface ReplicationArgs {
  /** Seconds of each measured load phase. */
  durationS: number;
  /** Seconds of paced load before the steady phase (and the logical baseline) is measured: connections, prepared statements and JIT warm up. */
  warmupS: number;
  /** Seconds B's connection stays disabled in the catch-up phase. */
  catchupS: number;
  /** Steady write rate on A, ops/s. */
  rate: number;
  /** Writers of the saturated phase (and of baselines at that concurrency). */
  clients: number;
  skipLogical: boolean;
  /** Leave out the relay floor (relay-baseline.ts): two minimal JavaScript processes doing A → B over HTTP. */
  skipRelay: boolean;
  /**
   * Run the clusters (and the raw INSERT baseline) on a PostgreSQL instance started for the
   * run, with track_commit_timestamp=on, so lag is measured from A's commit; else on the
   * server at TERN_BENCH_PG_URL (127.0.0.1:5432), from the event time.
   */
  ownPostgres: boolean;
  /** Leave the cluster directories (configs, server logs) behind. */
  keepLogs: boolean;
  shards: number;
}

const USAGE =
  "usage: bun bench/replication.ts [--duration S] [--warmup-seconds S] [--catchup-seconds S] [--rate OPS] [--clients N] [--shards N] [--skip-logical] [--skip-relay] [--own-postgres] [--keep-logs]";

/** Parses `--flag value` and `--flag=value`; throws with the usage line on bad input. */
export function parseReplicationArgs(argv: readonly string[]): ReplicationArgs {
  const args: ReplicationArgs = { durationS: 10, warmupS: 3, catchupS: 30, rate: 500, clients: 32, skipLogical: false, skipRelay: false, ownPostgres: false, keepLogs: false, shards: 4 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--help" || arg === "-h") throw new Error(USAGE);
    const switches = { "--skip-logical": "skipLogical", "--skip-relay": "skipRelay", "--own-postgres": "ownPostgres", "--keep-logs": "keepLogs" } as const;
    if (arg in switches) {
      args[switches[arg as keyof typeof switches]] = true;
      continue;
    }
    const eq = arg.indexOf("=");
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`${flag}: ${JSON.stringify(value)} is not a positive number\n${USAGE}`);
    if (flag === "--duration") args.durationS = n;
    else if (flag === "--catchup-seconds") args.catchupS = n;
    else if (flag === "--warmup-seconds") args.warmupS = n;
    else if (flag === "--rate") args.rate = n;
    else if (flag === "--clients") args.clients = Math.round(n);
    else if (flag === "--shards") args.shards = Math.round(n);
    else throw new Error(`unknown flag ${flag}\n${USAGE}`);
  }
  return args;
}
