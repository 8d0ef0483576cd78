import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import { BackfillService } from "../../src/gen/tern/admin/v1/backfill_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { openDatabase, type Database } from "../../src/persistence/database";
import { migrateSchema, schemaStatus } from "../../src/persistence/migrate";
import { rowsOf } from "../../src/persistence/raw-statements";
import { replicationDlq } from "../../src/persistence/schema";
import { backfillDone, expectSameRuns, seedExecutions, tern } from "../backfill/support";
import { connectAll, describeOn, startClusters } from "../failover/mesh";
import { faultyApplier } from "../replication/dlq-faults";
import { addr, expectSameHistories, globalNamespace } from "../replication/support";
import { eventually } from "../support/eventually";
import { migrationsThrough } from "../support/migrations";
import { migrationsFolder, newDataLocation, startTestCluster, type TestCluster } from "../support/server";
import type { StoreKind } from "../support/stores";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** The last migration of the previous release (0b9400b). */
const OLD_LAST = "0008_backfill_job_failed_runs";
/**
 * What the migrations since OLD_LAST added, taken away again: a database the current build
 * filled, so taken back, holds what the previous release's server wrote (its columns are the
 * same but these). The test checks the result against a database migrated to OLD_LAST.
 */
const BACK_TO_OLD = [
  `alter table "replication_dlq" drop column "version_history"`,
  `alter table "backfill_jobs" drop column "retry_error"`,
  `drop table "held_namespace_tasks"`,
  `alter table "replication_ack_levels" drop column "cleaned_through"`,
  `alter table "cluster_metadata" drop column "disabled_at"`,
  `drop index "executions_zombie"`,
  `drop index "history_branches_unsettled"`,
];

const open = (store: StoreKind, location: string) => openDatabase(store === "postgres" ? { postgres: { url: location } } : { pglite: { dataDir: location } });

/** Every column of tern's tables, to compare two schemas. */
async function columns(database: Database): Promise<string[]> {
  const rows = rowsOf(await database.db.execute(sql`
    select table_name, column_name, data_type, is_nullable, column_default from information_schema.columns
    where table_schema = 'public' order by table_name, column_name`));
  return rows.map((r) => Object.values(r).join(" "));
}

/** The columns of a database migrated with the previous release's migrations only. */
async function oldColumns(store: StoreKind, folder: string): Promise<string[]> {
  const location = await newDataLocation(store);
  const database = await open(store, store === "pglite" ? `${location.location}/data` : location.location);
  try {
    await migrateSchema(database, folder);
    return await columns(database);
  } finally {
    await database.close();
    await location.remove();
  }
}

/**
 * Takes x's database (x stopped) back to the previous release's schema, its rows kept, and
 * checks it is that schema: the migrations since are pending there.
 */
async function backToOldRelease(store: StoreKind, x: TestCluster, old: string[]): Promise<void> {
  const database = await open(store, x.dataLocation);
  try {
    for (const statement of BACK_TO_OLD) await database.db.execute(sql.raw(statement));
    const known = (await schemaStatus(database, migrationsFolder)).known;
    const since = known.slice(known.indexOf(OLD_LAST) + 1);
    const when = (JSON.parse(readFileSync(join(migrationsFolder, "meta", "_journal.json"), "utf8")) as { entries: { tag: string; when: number }[] }).entries
      .filter((e) => since.includes(e.tag))
      .map((e) => e.when);
    await database.db.execute(sql.raw(`delete from drizzle.__drizzle_migrations where created_at in (${when.join(", ")})`));
    // A migration added since without its undoing in BACK_TO_OLD fails here, naming its column.
    expect(await columns(database)).toEqual(old);
    expect((await schemaStatus(database, migrationsFolder)).pending).toEqual(since);
  } finally {
    await database.close();
  }
}

for (const store of await testStores()) {
  describe(`upgrade from the previous release's schema (${OLD_LAST}) with data, on ${store}`, () => {
    const migrations = migrationsThrough(OLD_LAST);
    const clusters: TestCluster[] = [];
    afterAll(async () => {
      // The restarted ones first: the first of each owns the data.
      for (const x of clusters.reverse()) await x.destroy();
      migrations.remove();
    });
    const run = (workflowId: string) => ({ workflowId, runId: "" });

    test("TestRollingUpgradeKeepsDlqBackfillsAndQueuedTasks: B then A restarted on the new build, each database migrated at its start", async () => {
      const old = await oldColumns(store, migrations.folder);
      const poisoned = new Set(["bad"]);
      const busy = new Map<string, number>();
      const options = { retry: { attempts: 3, backoffMs: 5 }, wrapApplier: faultyApplier(poisoned, new Map(), busy, new Map()) };
      let [a, b] = await startClusters(store, [{ shards: 1 }, { shards: 1, serverOptions: { replication: options } }]);
      clusters.push(a, b);
      await connectAll([a, b]);
      const wf = () => a.client(WorkflowService);
      await wf().registerNamespace({ namespace: "home" });
      const nsId = await globalNamespace(a, b, "orders");
      for (const id of ["good", "bad"]) {
        await wf().startWorkflowExecution({ namespace: "orders", workflowId: id, workflowType: "t", taskQueue: "q" });
        await wf().signalWorkflowExecution({ namespace: "orders", workflowExecution: run(id), signalName: "s1" });
      }
      // B's DLQ holds bad's tasks, as the previous release wrote them (no version history).
      const dlqOf = (x: TestCluster) => x.server.database.db.select().from(replicationDlq).orderBy(replicationDlq.taskId);
      await eventually(async () => expect((await dlqOf(b)).map((e) => e.workflowId)).toEqual(["bad", "bad"]), { timeout: 20_000 });
      // And a backfill of a namespace B joined, held RUNNING at a run its database is busy for.
      await wf().registerNamespace({ namespace: "joined", isGlobalNamespace: true, clusters: ["clusterA"] });
      await seedExecutions(a, "joined", 10, "jn");
      busy.set("jn-0003", Number.MAX_SAFE_INTEGER);
      await wf().updateNamespace({ namespace: "joined", clusters: ["clusterA", "clusterB"] });
      await eventually(async () => {
        const [job] = (await b.client(BackfillService).getBackfillStatus({ namespace: "joined" })).jobs;
        expect([job?.status, job?.lastError.startsWith("retrying: ")]).toEqual(["RUNNING", true]);
      }, { timeout: 20_000 });

      // B first: stopped, A writes on (tasks queued for B), B's database taken back and B started on the new build.
      await b.stop();
      await wf().signalWorkflowExecution({ namespace: "orders", workflowExecution: run("good"), signalName: "while-b-down" });
      await wf().startWorkflowExecution({ namespace: "orders", workflowId: "during", workflowType: "t", taskQueue: "q" });
      await backToOldRelease(store, b, old);
      b = await startTestCluster({ store, name: "clusterB", initialFailoverVersion: 2, shards: 1, dataLocation: b.dataLocation });
      clusters.push(b);
      expect((await schemaStatus(b.server.database, migrationsFolder)).pending).toEqual([]);
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });

      // Its rows read right: the DLQ entries (no version history) merge from A's current branch, the backfill goes on to DONE.
      expect((await dlqOf(b)).map((e) => [e.workflowId, e.versionHistory])).toEqual([["bad", null], ["bad", null]]);
      const merged = await tern(b, "replication", "dlq", "merge", "-o", "json");
      expect([merged.code, JSON.parse(merged.out).merged]).toEqual([0, "2"]);
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 20_000 });
      expect((await backfillDone(b, "joined", "clusterA")).lastError).toBe("");
      expect(await expectSameRuns(a, b, "joined", 1)).toBe(11);
      expect((await describeOn(b, "orders")).replicationConfig!.activeClusterName).toBe("clusterA");

      // Then A, with B on the new build: its local namespace and queued writes survive, and replication goes on.
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: false });
      await wf().signalWorkflowExecution({ namespace: "orders", workflowExecution: run("bad"), signalName: "queued-on-a" });
      await a.stop();
      await backToOldRelease(store, a, old);
      a = await startTestCluster({ store, name: "clusterA", initialFailoverVersion: 1, shards: 1, dataLocation: a.dataLocation });
      clusters.push(a);
      expect((await schemaStatus(a.server.database, migrationsFolder)).pending).toEqual([]);
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: true });
      expect((await describeOn(a, "home")).isGlobalNamespace).toBe(false);
      await wf().signalWorkflowExecution({ namespace: "orders", workflowExecution: run("good"), signalName: "after" });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 20_000 });
      expect(await dlqOf(b)).toEqual([]);
    });
  });
}
