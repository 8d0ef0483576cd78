/** Test settings from the environment (the test suite's one reader of process.env). */
export const testEnv = {
  /** Admin URL of the PostgreSQL the suites create databases on (unset: 127.0.0.1:5432); "off": PGlite only. */
  postgresUrl: process.env.TERN_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
  /** Set by test/run.ts after it checked PostgreSQL is reachable. */
  postgresChecked: process.env.TERN_TEST_POSTGRES === "1",
  /** Seed of the randomized conflict test (test/conflict/randomized.test.ts), to replay a failure. */
  seed: process.env.TERN_SEED,
  /** Seed of the failover soak (test/failover/chaos.test.ts), to replay a run. */
  chaosSeed: process.env.TERN_CHAOS_SEED,
  /** Chaos steps of the failover soak (default: a run of about 2 minutes for the suite). */
  chaosSteps: process.env.TERN_CHAOS_STEPS,
  /** How many clusters the failover soak runs (default 2, at most 3). */
  chaosClusters: process.env.TERN_CHAOS_CLUSTERS,
  /** Whether the failover soak's restarts crash the server (its database connections reset) rather than stop it: "1" all, "0" none, unset half. */
  chaosCrash: process.env.TERN_CHAOS_CRASH === undefined ? undefined : process.env.TERN_CHAOS_CRASH === "1",
  /** Seed of the kill -9 loop (test/e2e/crash-loop.test.ts), to replay a run. */
  crashSeed: process.env.TERN_CRASH_SEED,
  /** Kills the kill -9 loop makes per store (default 2). */
  crashRounds: process.env.TERN_CRASH_ROUNDS,
  /** Runs the tests that write gigabytes (test/replication/verify-large-run.test.ts): "1". */
  largeTests: process.env.TERN_TEST_LARGE === "1",
  requirePostgres: process.env.CI === "true" || process.env.TERN_TEST_REQUIRE_POSTGRES === "1",
};
