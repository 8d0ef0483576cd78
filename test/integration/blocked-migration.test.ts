import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { sql } from "drizzle-orm";
import postgres from "postgres";
import { openDatabase } from "../../src/persistence/database";
import { migrateSchema, schemaStatus } from "../../src/persistence/migrate";
import { rowsOf } from "../../src/persistence/raw-statements";
import { eventually } from "../support/eventually";
import { migrationsThrough } from "../support/migrations";
import { migrationsFolder, newDataLocation } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const removals: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const remove of removals.reverse()) await remove();
});

/** A new PostgreSQL database migrated through the migration tagged last, as an older build left it, opened with lockTimeoutMs. */
async function databaseThrough(last: string, lockTimeoutMs: number) {
  const { location, remove } = await newDataLocation("postgres");
  removals.push(remove);
  const old = migrationsThrough(last);
  removals.push(old.remove);
  const database = await openDatabase({ postgres: { url: location, lockTimeoutMs } });
  removals.push(() => database.close());
  await migrateSchema(database, old.folder);
  return { location, database };
}

// An upgrade's migrations meeting a table another session holds (a pg_dump, an operator's open
// transaction): the start fails at the lock timeout, and must say what to end and that the
// database is as it was.
describe.if((await testStores()).includes("postgres"))("a migration blocked by another session's lock", () => {
  test("TestMigrationBlockedByAnotherSessionsLockNamesItsHolderAndAppliesNothing", async () => {
    const { location, database } = await databaseThrough("0006_replication_task_event_bytes", 200);

    // 0007 alters history_branches: a session reading it (as pg_dump does) holds it.
    const admin = postgres(location, { max: 1, onnotice: () => {}, connection: { application_name: "upgrade-test-dump" } });
    const holder = await admin.reserve();
    let failure = "";
    try {
      await holder`begin`;
      await holder`lock table history_branches in access share mode`;
      const [row] = await holder`select pg_backend_pid() as pid`;
      const pid = row?.pid as number;
      failure = await migrateSchema(database, migrationsFolder).then(() => "migrated", (e) => String(e));
      expect(failure).toContain("55P03: canceling statement due to lock timeout");
      expect(failure).toContain("applying 0007_history_branch_reapplied_through");
      expect(failure).toContain(`its table history_branches held by pid ${pid} (upgrade-test-dump, idle in transaction since `);
      expect(failure).toContain("none of the pending migrations is applied");
      expect((await schemaStatus(database, migrationsFolder)).pending[0]).toBe("0007_history_branch_reapplied_through");
    } finally {
      await holder`rollback`;
      holder.release();
      await admin.end({ timeout: 1 });
    }
    // The holder gone, the next start applies them all.
    expect(await migrateSchema(database, migrationsFolder)).toContain("0007_history_branch_reapplied_through");
    expect((await schemaStatus(database, migrationsFolder)).pending).toEqual([]);
  });

  test("TestMigrationWhoseSessionDiesMidwayLeavesTheDatabaseAsItWasAndTheNextStartAppliesAll", async () => {
    // No lock timeout: the migration waits at 0007 (0006 applied in its transaction) until its session is ended, as a killed server's is.
    const { location, database } = await databaseThrough("0005_namespace_write_barrier", 0);

    const admin = postgres(location, { max: 2, onnotice: () => {} });
    const holder = await admin.reserve();
    let failure: string | undefined;
    try {
      await holder`begin`;
      await holder`lock table history_branches in access share mode`;
      const migrating = migrateSchema(database, migrationsFolder).then(() => "migrated", (e) => String(e));
      await eventually(async () => {
        const [waiting] = await admin`select pid from pg_stat_activity where datname = current_database() and application_name = 'tern-migrate' and wait_event_type = 'Lock' and query like 'ALTER TABLE "history_branches"%'`;
        expect(waiting).toBeDefined();
        await admin`select pg_terminate_backend(${waiting!.pid as number})`;
      }, { timeout: 15_000, interval: 50 });
      failure = await migrating;
    } finally {
      await holder`rollback`;
      holder.release();
      await admin.end({ timeout: 1 });
    }
    expect(failure).toContain("migrating the database failed");
    // 0006, applied before the session died, is not there: the migrations are one transaction.
    const status = await schemaStatus(database, migrationsFolder);
    expect(status.pending[0]).toBe("0006_replication_task_event_bytes");
    const column = rowsOf(await database.db.execute(sql`select 1 from information_schema.columns where table_name = 'replication_tasks' and column_name = 'event_bytes'`));
    expect(column).toEqual([]);
    expect(await migrateSchema(database, migrationsFolder)).toEqual(status.pending);
    expect((await schemaStatus(database, migrationsFolder)).pending).toEqual([]);
  });
});
