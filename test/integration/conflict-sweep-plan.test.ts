import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { sql } from "drizzle-orm";
import { runsToSettleQueries } from "../../replication/conflict-sweep";
import type { Db } from "../../src/persistence/database";
import { useTestDatabase } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

type SweepQuery = ReturnType<typeof runsToSettleQueries>["zombies" | "branched"];

const literal = (v: unknown) => `'${String(v).replaceAll("'", "''")}'`;

/**
 * The plans of the statement the sweep sends (its text and parameters, as drizzle renders them):
 * custom, as a first execution gets it (PGlite's every one), and generic, as PostgreSQL may keep
 * for a statement postgres.js prepared once it ran five times.
 */
async function plans(db: Db, query: SweepQuery): Promise<Record<"custom" | "generic", string>> {
  const { sql: text, params } = query.toSQL();
  const args = params.length ? `(${params.map(literal).join(", ")})` : "";
  return db.transaction(async (tx) => {
    await tx.execute(sql.raw(`prepare sweep_statement as ${text}`));
    const explain = async (mode: string) => {
      await tx.execute(sql.raw(`set local plan_cache_mode = ${mode}`));
      const rows = (await tx.execute(sql.raw(`explain execute sweep_statement${args}`))) as unknown as { rows?: Record<string, string>[] };
      return (rows.rows ?? (rows as unknown as Record<string, string>[])).map((r) => r["QUERY PLAN"]).join("\n");
    };
    const planned = { custom: await explain("force_custom_plan"), generic: await explain("force_generic_plan") };
    await tx.execute(sql.raw("deallocate sweep_statement"));
    return planned;
  });
}

for (const store of await testStores()) {
  describe(`the conflict sweep's reads on ${store}`, () => {
    const opened = useTestDatabase(store);

    // The sweep runs at every start (on PGlite in the server's thread, before it listens) and
    // every activation: a scan of every run there took 0.5-0.7 s at 100k runs.
    test("TestTheSweepReadsZombiesAndUnsettledBranchesThroughTheirIndexesNotEveryRow", async () => {
      const db = opened.database.db;
      await db.execute(sql.raw(`insert into executions (namespace_id, workflow_id, run_id, shard_id, workflow_type, task_queue, status, start_time, next_event_id, last_write_version, version_history)
        select 'ns-' || (i % 2), 'wf-' || i, 'run-' || i, 1, 'T', 'q', case when i % 5000 in (7, 8) then 'ZOMBIE' when i % 10 = 0 then 'RUNNING' else 'COMPLETED' end,
          now() - i * interval '1 second', 21, 1, '[{"eventId":20,"version":1}]'
        from generate_series(1, 20000) i`));
      // Settled branches stay (a branch is kept for good); a few are not settled yet.
      await db.execute(sql.raw(`insert into history_branches (namespace_id, workflow_id, run_id, branch_id, fork_event_id, version_history, reapplied_through)
        select 'ns-' || (i % 2), 'wf-' || i, 'run-' || i, 1, 10, '[{"eventId":15,"version":2}]', case when i % 5000 in (3, 4) then 0 else 15 end
        from generate_series(1, 20000) i`));
      await db.execute(sql.raw("analyze executions, history_branches"));

      for (const namespaceId of [undefined, "ns-1"]) {
        const { zombies, branched } = runsToSettleQueries(db, namespaceId);
        expect((await zombies).length).toBe(namespaceId ? 4 : 8);
        expect((await branched).length).toBe(namespaceId ? 4 : 8);
        for (const [query, table, index] of [[zombies, "executions", "executions_zombie"], [branched, "history_branches", "history_branches_unsettled"]] as const) {
          for (const [mode, plan] of Object.entries(await plans(db, query))) {
            expect({ namespaceId, mode, plan }).toEqual({ namespaceId, mode, plan: expect.stringContaining(index) });
            expect(plan).not.toContain(`Seq Scan on ${table}`);
          }
        }
      }
    });
  });
}
