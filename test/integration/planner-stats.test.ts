import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import postgres from "postgres";
import { deleteTimers, lockRun } from "../../src/history/execution-store";
import { createLogger } from "../../src/observability/log";
import { openDatabase, type Database, type Tx } from "../../src/persistence/database";
import { migrateSchema } from "../../src/persistence/migrate";
import { createPlannerStats } from "../../src/persistence/planner-stats";
import { migrationsFolder, newDataLocation } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

// PostgreSQL's planner and statistics; PGlite plans each query anew.
for (const store of (await testStores()).filter((s) => s === "postgres")) {
  describe(`query plans that must not grow with the tables on ${store}`, () => {
    let location: Awaited<ReturnType<typeof newDataLocation>>;
    let database: Database;
    // One connection: the statements it prepares, and the plans PostgreSQL keeps for them, are the ones measured.
    let direct: postgres.Sql;
    const stats = () => createPlannerStats({ db: database.db, log: createLogger({ level: "error" }), intervalMs: 0 });

    beforeAll(async () => {
      location = await newDataLocation(store);
      database = await openDatabase({ postgres: { url: location.location } }, { maxConnections: 1 });
      await migrateSchema(database, migrationsFolder);
      direct = postgres(location.location, { max: 1, onnotice: () => {} });
      // What this test shows must not hang on the server's autovacuum settings.
      for (const t of ["executions", "history_events"]) await direct.unsafe(`alter table ${t} set (autovacuum_enabled = false)`);
    });
    afterAll(async () => {
      await direct.end();
      await database.close();
      await location.remove();
    });

    /** Makes the counters of what the direct connection did visible (PostgreSQL flushes them up to seconds later). */
    async function flushDirect(): Promise<void> {
      await direct`select pg_stat_force_next_flush()`;
      await direct`select 1`;
    }

    /** Index tuples executions' scans fetched so far (this connection's counters flushed first). */
    async function fetched(): Promise<number> {
      await database.db.execute("select pg_stat_force_next_flush()" as never).catch(() => {});
      await database.db.execute("select 1" as never);
      const [row] = await direct`select coalesce(idx_tup_fetch, 0)::int as n from pg_stat_user_tables where relname = 'executions'`;
      return row!.n as number;
    }

    test("ARunLookupPlannedOnAnEmptyTableStaysOnTheRunKeyOnceTernAnalyzedIt", async () => {
      const lookup = (wf: string, run: string) => lockRun(database.db as unknown as Tx, "ns", wf, run);
      // Planned, and kept, while executions is empty.
      for (let i = 0; i < 8; i++) expect(await lookup("w1", "r1")).toBeUndefined();
      await direct`insert into executions (namespace_id, workflow_id, run_id, shard_id, workflow_type, task_queue, status, start_time, next_event_id, last_write_version, version_history)
        select 'ns', 'w' || i, 'r' || i, 1, 'T', 'q', 'RUNNING', now() - i * interval '1 second', 2, 1, '[]' from generate_series(1, 3000) i`;
      await flushDirect();
      const perLookup = async () => {
        const before = await fetched();
        for (let i = 1; i <= 20; i++) expect((await lookup(`w${i * 100}`, `r${i * 100}`))?.runId).toBe(`r${i * 100}`);
        return ((await fetched()) - before) / 20;
      };
      // The kept plan reads the namespace's runs through the start-time index: some per lookup, all at worst.
      const without = await perLookup();
      expect(without).toBeGreaterThan(100);

      expect(await stats().runOnce()).toContain("executions");
      expect(await perLookup()).toBeLessThanOrEqual(2);
    });

    test("AClosingRunDeletesItsTimersThroughTheRunIndexWithoutReadingTheOthers", async () => {
      await direct`insert into timer_tasks (id, shard_id, fire_at, kind, namespace_id, workflow_id, run_id, version)
        select 't' || i, 1, now() + interval '1 hour', 'WORKFLOW_TIMEOUT', 'ns', 'w' || i, 'r' || i, 1 from generate_series(1, 5000) i`;
      await flushDirect();
      const read = async () => {
        await database.db.execute("select pg_stat_force_next_flush()" as never);
        await database.db.execute("select 1" as never);
        const [row] = await direct`select seq_tup_read::int as seq, coalesce(idx_tup_fetch, 0)::int as idx from pg_stat_user_tables where relname = 'timer_tasks'`;
        return row as { seq: number; idx: number };
      };
      const before = await read();
      for (let i = 1; i <= 10; i++) await deleteTimers(database.db as unknown as Tx, { namespaceId: "ns", workflowId: `w${i}`, runId: `r${i}` });
      const after = await read();
      expect(after.seq - before.seq).toBe(0);
      expect(after.idx - before.idx).toBe(10);
      const [{ n }] = (await direct`select count(*)::int as n from timer_tasks`) as unknown as [{ n: number }];
      expect(n).toBe(4990);
    });

    test("LeavesUnchangedTablesAndThoseWithOneIndexToAutovacuum", async () => {
      await direct`insert into history_events (namespace_id, workflow_id, run_id, event_id, version, event_time, event_type, attributes)
        select 'ns', 'w1', 'r1', i, 1, now(), 'T', '{}' from generate_series(1, 3000) i`;
      await flushDirect();
      // timer_tasks (three indexes) changed in the test before.
      expect(await stats().runOnce()).toEqual(["timer_tasks"]);
      expect(await stats().runOnce()).toEqual([]);
      const [row] = await direct`select last_analyze from pg_stat_user_tables where relname = 'history_events'`;
      expect(row!.last_analyze).toBeNull();
    });

    test("UpdatesAloneDoNotAnalyzeATableOnlyRowsAddedOrRemoved", async () => {
      // executions holds the 3000 runs of the first test, analyzed there.
      expect(await stats().runOnce()).not.toContain("executions");
      // Every run updated, twice: as many changes as rows, and not one row more or less.
      for (let i = 0; i < 2; i++) await direct`update executions set db_version = db_version + 1, next_event_id = next_event_id + 1`;
      await flushDirect();
      expect(await stats().runOnce()).not.toContain("executions");
      // 250 more runs: far from twice the 3000 counted.
      const addRuns = (from: number, to: number) => direct`insert into executions (namespace_id, workflow_id, run_id, shard_id, workflow_type, task_queue, status, start_time, next_event_id, last_write_version, version_history)
        select 'ns', 'x' || i, 'r' || i, 1, 'T', 'q', 'COMPLETED', now(), 2, 1, '[]' from generate_series(${from}::int, ${to}::int) i`;
      await addRuns(1, 250);
      await flushDirect();
      expect(await stats().runOnce()).not.toContain("executions");
      // 3000 more in all: twice the rows counted.
      await addRuns(251, 3000);
      await flushDirect();
      expect(await stats().runOnce()).toContain("executions");
      expect(await stats().runOnce()).not.toContain("executions");
      // Back to half of the 6000 counted: shrinking counts as well.
      await direct`delete from executions where workflow_id like 'x%'`;
      await flushDirect();
      expect(await stats().runOnce()).toContain("executions");
    });
  });
}
