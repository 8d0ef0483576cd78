import { startPrivatePostgres } from "./private-postgres";
import { unreachableReason } from "./pg-database";

/** The command line parsed by parse, or the process exits 2 with parse's message (the usage). */
export function argsOrExit<T>(parse: (argv: readonly string[]) => T): T {
  try {
    return parse(process.argv.slice(2));
  } catch (e) {
    console.error((e as Error).message);
    process.exit(2);
  }
}

/** The admin URL of the bench's PostgreSQL (TERN_BENCH_PG_URL, else the local one); exits 1 when it does not answer. */
export async function benchPostgresOrExit(): Promise<string> {
  const adminUrl = process.env.TERN_BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
  const why = await unreachableReason(adminUrl);
  if (why) {
    console.error(`PostgreSQL is not reachable (${why}); set TERN_BENCH_PG_URL`);
    process.exit(1);
  }
  return adminUrl;
}

/**
 * The admin URL the clusters run on: with `ownPostgres`, a PostgreSQL instance started for
 * the run (track_commit_timestamp=on), its stop registered with `own`; else benchPostgresOrExit's.
 */
export async function clusterPostgres(ownPostgres: boolean, own: (cleanup: () => Promise<unknown>) => void): Promise<string> {
  if (!ownPostgres) return benchPostgresOrExit();
  const pg = await startPrivatePostgres();
  own(() => pg.stop());
  return pg.url("postgres");
}

/**
 * Clean-ups of a bench run: `own` registers one; `cleanUp` runs them last-registered first,
 * once, and also runs on SIGINT and SIGTERM before the process exits.
 */
export function createCleanups() {
  const cleanups: (() => Promise<unknown>)[] = [];
  let cleaning = Promise.resolve();
  // keep: how many of the first registered to leave for a later call (a server the rest ran on).
  const cleanUp = (keep = 0) =>
    (cleaning = cleaning.then(async () => {
      for (const c of cleanups.splice(keep).reverse()) await c().catch((e) => console.error(`clean-up: ${(e as Error).message}`));
    }));
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.on(sig, () => {
      console.error(`\n${sig}: cleaning up`);
      void cleanUp().finally(() => process.exit(130));
    });
  }
  return { own: (c: () => Promise<unknown>) => void cleanups.push(c), cleanUp };
}
