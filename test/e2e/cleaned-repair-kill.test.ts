import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import postgres from "postgres";
import { startClusterProcess, type ClusterProcess, type ClusterProcessOptions } from "../../scripts/lib/cluster-process";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { openDatabase } from "../../src/persistence/database";
import { eventually } from "../support/eventually";
import { createTestDatabase } from "../support/postgres";
import { scratchDir } from "../support/scratch-dir";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(4 * serverStartTimeout);

const NS = "ledger";
/**
 * clusterA's grace for a disabled remote, counted from the disable: the writes made while clusterB
 * is disabled end well within it, so once the cleanup deleted them they are past the outbox
 * tail's age limit (TAIL_AGE_MS) and clusterB's first pages come from the database, with the mark.
 */
const GRACE_MS = 8_000;
/** outbox-tail.ts's maxAgeMs, and a little more. */
const TAIL_AGE_MS = 5_500;
/** The advisory lock clusterB's repair waits for at its commit on PostgreSQL. */
const HOLD_KEY = 4711;

/**
 * clusterB's repair of a mark (receiver.ts, repairCleaned) held at its commit: a deferred trigger
 * on backfill_jobs, whose rows only the repair writes in this test, runs at COMMIT. On PostgreSQL
 * the first commit waits for an advisory lock the test holds (a sequence counts the commits: the
 * restarted process's repair passes). PGlite is the process's own: the first commit writes a flag
 * file in the data directory and sleeps until the kill; with the file there, later ones pass.
 */
const HOLD_REPAIR = {
  postgres: `create sequence repair_commits;
    create function hold_repair() returns trigger language plpgsql as $$ begin
      if nextval('repair_commits') = 1 then perform set_config('lock_timeout', '0', true); perform pg_advisory_xact_lock(${HOLD_KEY}); end if;
      return null; end $$`,
  pglite: `create function hold_repair() returns trigger language plpgsql as $$
      declare flag text := current_setting('data_directory') || '/repair-held'; begin
      if pg_stat_file(flag, true) is null then execute format('copy (select 1) to %L', flag); perform pg_sleep(600); end if;
      return null; end $$`,
};
const HOLD_TRIGGER = "create constraint trigger hold_repair after insert or update on backfill_jobs deferrable initially deferred for each row execute function hold_repair()";

const clients = (p: ClusterProcess) => {
  const transport = createConnectTransport({ baseUrl: `http://${p.address}` });
  return { wf: createClient(WorkflowService, transport), op: createClient(OperatorService, transport), admin: createClient(AdminService, transport) };
};

/** The events of workflowId's current run on p, as "id@version:type"; [] where p has no such run. */
async function eventsOf(wf: Client<typeof WorkflowService>, workflowId: string): Promise<string[]> {
  try {
    const page = await wf.getWorkflowExecutionHistory({ namespace: NS, execution: { workflowId }, maximumPageSize: 1000 });
    return page.history!.events.map((e) => `${e.eventId}@${e.version}:${e.eventType}`);
  } catch (e) {
    if (ConnectError.from(e).code === Code.NotFound) return [];
    throw e;
  }
}

/**
 * Runs written while clusterB was disabled past clusterA's grace (their tasks deleted, a mark
 * left) and right after its enable (tasks past the mark): clusterB is killed (SIGKILL) while its
 * repair of the mark is held at its commit, and restarted. On PostgreSQL the held commit then
 * lands after the restart (its session outlives the process); on PGlite it is gone with it.
 */
for (const store of await testStores()) {
  describe(`a receiver killed between a cleaned mark's arrival and its repair's commit on ${store}`, () => {
    const scratch = scratchDir("cleaned-repair-kill-");
    const dbs: { url: string; drop(): Promise<void> }[] = [];
    const running: ClusterProcess[] = [];
    let holder: postgres.Sql | undefined;
    afterAll(async () => {
      await holder?.end({ timeout: 1 });
      await Promise.all(running.map((p) => p.stop()));
      for (const d of dbs) await d.drop();
      scratch.done();
    });

    test("TestReceiverKilledMidRepairEndsWithEveryRunAndNothingPastTheHole", async () => {
      if (store === "postgres") dbs.push(await createTestDatabase(), await createTestDatabase());
      const options: ClusterProcessOptions[] = [
        { name: "clusterA", initialFailoverVersion: 1, dir: scratch.dir, databaseUrl: dbs[0]?.url, logLevel: "warn",
          extraYaml: `replication:\n  cleanupIntervalMs: 200\n  disabledRemoteGraceMs: ${GRACE_MS}\n` },
        { name: "clusterB", initialFailoverVersion: 2, dir: scratch.dir, databaseUrl: dbs[1]?.url, logLevel: "warn" },
      ];
      for (const o of options) running.push(await startClusterProcess(o));
      options.forEach((o, i) => (o.port = running[i]!.port));
      let [a, b] = running as [ClusterProcess, ClusterProcess];
      const A = clients(a);
      await A.op.addOrUpdateRemoteCluster({ frontendAddress: b.address });
      await clients(b).op.addOrUpdateRemoteCluster({ frontendAddress: a.address });
      await A.wf.registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await eventually(() => clients(b).wf.describeNamespace({ namespace: NS }), { timeout: 30_000 });

      const start = (id: string) => A.wf.startWorkflowExecution({ namespace: NS, workflowId: id, workflowType: "T", taskQueue: "q" });
      const signal = (id: string, name: string) => A.wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: id }, signalName: name });
      const ids = (p: string) => [0, 1, 2, 3].map((i) => `${p}-${i}`);
      for (const id of ids("w")) await start(id);
      const before = Object.fromEntries(await Promise.all(ids("w").map(async (id) => [id, await eventsOf(A.wf, id)] as const)));
      await eventually(async () => {
        for (const id of ids("w")) expect(await eventsOf(clients(b).wf, id)).toEqual(before[id]!);
      }, { timeout: 30_000 });

      // The hold goes in once clusterB joined (its join backfill wrote backfill_jobs).
      if (store === "postgres") {
        const bdb = postgres(dbs[1]!.url, { max: 1, onnotice: () => {} });
        await bdb.unsafe(`${HOLD_REPAIR.postgres}; ${HOLD_TRIGGER}`).simple();
        await bdb.end({ timeout: 1 });
      } else {
        expect(await b.stop()).toBe(0);
        const database = await openDatabase({ pglite: { dataDir: join(scratch.dir, "clusterB", "data") } });
        await database.db.execute(sql.raw(HOLD_REPAIR.pglite));
        await database.db.execute(sql.raw(HOLD_TRIGGER));
        await database.close();
        running[1] = b = await startClusterProcess(options[1]!);
      }

      await A.op.addOrUpdateRemoteCluster({ frontendAddress: b.address, enableRemoteClusterConnection: false });
      const disabledAt = Date.now();
      for (const id of ids("w")) await signal(id, "while-disabled");
      for (const id of ids("r")) await start(id);
      await A.wf.completeWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "r-0" } });
      const wroteFor = Date.now() - disabledAt;
      // Past the grace clusterA deletes them, clusterB's ack or not, and marks how far.
      await eventually(async () => {
        const status = await A.admin.getReplicationStatus({});
        expect(status.remotes.find((r) => r.clusterName === "clusterB")?.cleanedPastShards ?? 0).toBeGreaterThan(0);
      }, { timeout: 60_000 });
      expect({ wroteFor, since: Date.now() - disabledAt - wroteFor > TAIL_AGE_MS }).toEqual({ wroteFor, since: true });

      if (store === "postgres") {
        holder = postgres(dbs[1]!.url, { max: 1, onnotice: () => {} });
        await holder`select pg_advisory_lock(${HOLD_KEY})`;
      }
      await A.op.addOrUpdateRemoteCluster({ frontendAddress: b.address, enableRemoteClusterConnection: true });
      // Tasks past the mark, of runs whose earlier events are in the hole and of new ones.
      for (const id of ids("w")) await signal(id, "after-enable");
      for (const id of ids("r").slice(1)) await signal(id, "after-enable");
      for (const id of ids("s")) await start(id);

      const flag = join(scratch.dir, "clusterB", "data", "repair-held");
      const held = async () => {
        if (store === "pglite") return existsSync(flag);
        const [row] = await holder!`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event = 'advisory' and pid <> pg_backend_pid()`;
        return row!.n === 1;
      };
      await eventually(async () => expect(await held()).toBe(true), { timeout: 60_000, interval: 20 });
      if (store === "postgres") {
        // Held in the repair's commit, clusterB applies nothing past the hole.
        for (const id of ids("w")) expect(await eventsOf(clients(b).wf, id)).toEqual(before[id]!);
        for (const id of [...ids("r"), ...ids("s")]) expect(await eventsOf(clients(b).wf, id)).toEqual([]);
      }
      await b.crash();
      // Its session, which PostgreSQL ends once it sees the client gone, ends now: the commit rolls back.
      if (store === "postgres") {
        await holder!`select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and wait_event = 'advisory' and pid <> pg_backend_pid()`;
        await holder!`select pg_advisory_unlock(${HOLD_KEY})`;
      }
      running[1] = b = await startClusterProcess(options[1]!);

      const all = [...ids("w"), ...ids("r"), ...ids("s")];
      await eventually(async () => {
        for (const id of all) expect({ id, events: await eventsOf(clients(b).wf, id) }).toEqual({ id, events: await eventsOf(A.wf, id) });
        const v = await A.admin.verifyReplication({ namespace: NS, cluster: "clusterB" });
        expect({ missing: v.missing.length, extra: v.extra.length, diverging: v.diverging.length, behind: v.behind.length, here: v.localExecutions, there: v.remoteExecutions })
          .toEqual({ missing: 0, extra: 0, diverging: 0, behind: 0, here: BigInt(all.length), there: BigInt(all.length) });
      }, { timeout: 90_000, interval: 500 });
      // Nothing was applied past the hole and failed: no task of clusterA's went to the DLQ.
      expect((await clients(b).admin.listReplicationDlq({})).entries).toEqual([]);
      expect(existsSync(flag)).toBe(store === "pglite");

      // Replication goes on as before.
      await signal("w-0", "last");
      await eventually(async () => expect(await eventsOf(clients(b).wf, "w-0")).toEqual(await eventsOf(A.wf, "w-0")), { timeout: 30_000 });
      scratch.passed();
    });
  });
}
