import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import type { Database } from "../../src/persistence/database";
import { openTestDatabase } from "../support/server";
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
