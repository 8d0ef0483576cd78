import postgres from "postgres";
import { ulid } from "ulid";
import { redactUrl } from "../../src/persistence/postgres-url";
import { testEnv } from "./env";

let reachable: Promise<boolean> | undefined;

/** Whether the test PostgreSQL answers (checked once per process). */
export function postgresReachable(): Promise<boolean> {
  if (testEnv.postgresUrl === "off") return Promise.resolve(false);
  reachable ??= (async () => {
    const sql = postgres(testEnv.postgresUrl, { max: 1, connect_timeout: 3, onnotice: () => {} });
    try {
      await sql`select 1`;
      return true;
    } catch {
      return false;
    } finally {
      await sql.end({ timeout: 1 });
    }
  })();
  return reachable;
}

/**
 * Why the PostgreSQL suites do not run, for the warnings of the runner and the suites: turned off
 * on purpose (TERN_TEST_POSTGRES_URL=off), or not answering at its URL, shown without its password.
 */
export function postgresMissing(): string {
  return testEnv.postgresUrl === "off" ? "PostgreSQL is turned off (TERN_TEST_POSTGRES_URL=off)" : `PostgreSQL is not reachable at ${redactUrl(testEnv.postgresUrl)}`;
}

/** A fresh, empty database for one test cluster (encoding: in it, with the C locale, which every encoding takes); drop() removes it. */
export async function createTestDatabase(prefix = "tern_test", encoding?: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `${prefix}_${ulid().toLowerCase()}`;
  const admin = postgres(testEnv.postgresUrl, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database ${name}${encoding ? ` encoding '${encoding}' lc_collate 'C' lc_ctype 'C' template template0` : ""}`);
  } finally {
    await admin.end({ timeout: 1 });
  }
  const url = new URL(testEnv.postgresUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const a = postgres(testEnv.postgresUrl, { max: 1, onnotice: () => {} });
      try {
        await a.unsafe(`drop database if exists ${name} with (force)`);
      } finally {
        await a.end({ timeout: 1 });
      }
    },
  };
}
