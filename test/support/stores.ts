import { postgresMissing, postgresReachable } from "./postgres";
import { testEnv } from "./env";

export type StoreKind = "pglite" | "postgres";

/**
 * The datastores a suite runs on: PGlite always, PostgreSQL when reachable. Without
 * PostgreSQL, CI fails here, and a local run says loudly that it skipped it.
 */
export async function testStores(): Promise<StoreKind[]> {
  if (await postgresReachable()) return ["pglite", "postgres"];
  if (testEnv.requirePostgres) throw new Error(`${postgresMissing()}; CI requires it`);
  if (!warned) {
    warned = true;
    console.warn(`\n!!! ${postgresMissing()}: PostgreSQL suites SKIPPED (PGlite only) !!!\n`);
  }
  return ["pglite"];
}
let warned = false;
