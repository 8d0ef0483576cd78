import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import postgres from "postgres";
import { ulid } from "ulid";
import { openDatabase, type Database } from "../../src/persistence/database";
import { migrateSchema } from "../../src/persistence/migrate";
import { testEnv } from "../support/env";
import { createTestDatabase } from "../support/postgres";
import { migrationsFolder, openTestDatabase } from "../support/server";
import { testStores } from "../support/stores";

// Skipped only where the PostgreSQL suites are (loudly; never in CI).
describe.if((await testStores()).includes("postgres"))("the applier's connections on PostgreSQL: commits without waiting for the flush, made durable on demand", () => {
  let opened: Awaited<ReturnType<typeof openTestDatabase>>;
  let database: Database;
  const one = async <T>(db: Database["db"], q: ReturnType<typeof sql>) => ((await db.execute(q)) as unknown as T[])[0]!;

  beforeAll(async () => {
    opened = await openTestDatabase("postgres");
    database = opened.database;
    await database.db.execute(sql`create table tern_test_applies (n int)`);
  });
  afterAll(() => opened.close());

  test("CommitsAsynchronouslyOnTheApplierConnectionsOnly", async () => {
    const applies = database.applies!;
    expect(applies.synchronousBecause).toBeUndefined();
    expect((await one<{ synchronous_commit: string }>(applies.db, sql`show synchronous_commit`)).synchronous_commit).toBe("off");
    expect((await one<{ synchronous_commit: string }>(database.db, sql`show synchronous_commit`)).synchronous_commit).toBe("on");
  });

  test("DurableFlushesTheWalPastEveryApplyCommittedBeforeIt", async () => {
    const applies = database.applies!;
    // Five times over: PostgreSQL's WAL writer flushes on its own every 200 ms, which may have
    // covered one of them anyway; it does not cover five right after their commits.
    for (let i = 0; i < 5; i++) {
      await applies.db.execute(sql`insert into tern_test_applies values (${i})`);
      const { lsn } = await one<{ lsn: string }>(applies.db, sql`select pg_current_wal_insert_lsn()::text as lsn`);
      await applies.durable();
      const { flushed } = await one<{ flushed: boolean }>(database.db, sql`select pg_current_wal_flush_lsn() >= ${lsn}::pg_lsn as flushed`);
      expect(flushed).toBe(true);
    }
  });
});

describe.if((await testStores()).includes("postgres"))("the applier's connections for a role denied the flush they need", () => {
  const role = `tern_test_role_${ulid().toLowerCase()}`;
  let target: { url: string; drop(): Promise<void> };
  let database: Database | undefined;
  const admin = (url: string) => postgres(url, { max: 1, onnotice: () => {} });

  beforeAll(async () => {
    target = await createTestDatabase();
    const server = admin(testEnv.postgresUrl);
    const inDb = admin(target.url);
    try {
      await server.unsafe(`create role ${role} login`);
      await server.unsafe(`alter database ${new URL(target.url).pathname.slice(1)} owner to ${role}`);
      // Functions are per database: this revokes it here only.
      await inDb.unsafe("revoke execute on function pg_logical_emit_message(boolean, text, text) from public");
    } finally {
      await Promise.all([server.end({ timeout: 1 }), inDb.end({ timeout: 1 })]);
    }
  });
  afterAll(async () => {
    await database?.close();
    await target.drop();
    const server = admin(testEnv.postgresUrl);
    try {
      await server.unsafe(`drop role if exists ${role}`);
    } finally {
      await server.end({ timeout: 1 });
    }
  });

  test("CommitSynchronously, and say why", async () => {
    const url = new URL(target.url);
    url.username = role;
    database = await openDatabase({ postgres: { url: url.toString() } });
    await migrateSchema(database, migrationsFolder);
    const applies = database.applies!;
    expect(applies.synchronousBecause).toContain("pg_logical_emit_message");
    expect(applies.synchronousBecause).toContain("permission denied");
    const [row] = (await applies.db.execute(sql`show synchronous_commit`)) as unknown as { synchronous_commit: string }[];
    expect(row!.synchronous_commit).toBe("on");
    await applies.durable();
  });
});
