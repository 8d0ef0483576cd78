import postgres from "postgres";
import { redactUrl } from "../../src/persistence/postgres-url";

/** A database created for one bench run. */
export interface TempDatabase {
  name: string;
  url: string;
  /** Drops it, closing other sessions first. */
  drop(): Promise<void>;
}

const admin = (url: string) => postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 3 });

/** Undefined when PostgreSQL at url answers `select 1`, else why it does not. */
export async function unreachableReason(url: string): Promise<string | undefined> {
  const sql = admin(url);
  try {
    await sql`select 1`;
    return undefined;
  } catch (e) {
    return `${redactUrl(url)}: ${(e as Error).message}`;
  } finally {
    await sql.end({ timeout: 1 });
  }
}

/** Creates `<prefix>_<random>` (default `tern_bench_<random>`) on the server of adminUrl. */
export async function createTempDatabase(adminUrl: string, prefix = "tern_bench"): Promise<TempDatabase> {
  const name = `${prefix}_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const sql = admin(adminUrl);
  try {
    await sql.unsafe(`create database ${name}`);
  } finally {
    await sql.end({ timeout: 1 });
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    name,
    url: url.toString(),
    async drop() {
      const sql = admin(adminUrl);
      try {
        await sql.unsafe(`drop database if exists ${name} with (force)`);
      } finally {
        await sql.end({ timeout: 1 });
      }
    },
  };
}
