import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { sql } from "drizzle-orm";
import postgres from "postgres";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { replicationDlq } from "../../src/persistence/schema";
import { connectAll, startClusters } from "../failover/mesh";
import { expectSameHistories, globalNamespace } from "../replication/support";
import { eventually } from "../support/eventually";
import { openDatabase, type Database } from "../../src/persistence/database";
import { migrateSchema } from "../../src/persistence/migrate";
import { rowsOf } from "../../src/persistence/raw-statements";
import { createTestDatabase } from "../support/postgres";
import { rejects } from "../support/rejects";
import { migrationsFolder, startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

// A PostgreSQL that is up but cannot run a write now (another transaction holds a lock past the
// lock timeout, a standby or read-only database after a failover): the write is a retryable
// UNAVAILABLE naming PostgreSQL's reason, not INTERNAL, and its retry with the same request id
// lands once when the database takes it again.
if ((await testStores()).includes("postgres")) {
  describe("a PostgreSQL that cannot run a write now", () => {
    let cluster: TestCluster;
    let admin: postgres.Sql;
    let dbName: string;
    const signal = (requestId: string) =>
      cluster.client(WorkflowService).signalWorkflowExecution({ namespace: "busy", workflowExecution: { workflowId: "w" }, signalName: "s", requestId });
    /** The answer to a signal: "ok" or the error's code and message. */
    const answer = (requestId: string) => signal(requestId).then(() => "ok", (e) => `${Code[ConnectError.from(e).code]}: ${ConnectError.from(e).message}`);
    /** Sets a default for the server's sessions, which its connections take when PostgreSQL has ended them. */
    const setForServer = async (setting: string, value: string | undefined) => {
      await admin.unsafe(value === undefined ? `alter database ${dbName} reset ${setting}` : `alter database ${dbName} set ${setting} = '${value}'`);
      await admin`select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`;
    };
    const signalRequestIds = async () => {
      const { history } = await cluster.client(WorkflowService).getWorkflowExecutionHistory({ namespace: "busy", execution: { workflowId: "w" } });
      return history!.events.flatMap((e) => (e.attributes.case === "workflowExecutionSignaledEventAttributes" ? [e.attributes.value.requestId] : []));
    };

    beforeAll(async () => {
      // The server's own lock timeout (persistence.datastore.postgres.lockTimeoutMs), short for the test.
      cluster = await startTestCluster({ store: "postgres", lockTimeoutMs: 200 });
      admin = postgres(cluster.dataLocation, { max: 1, onnotice: () => {} });
      dbName = new URL(cluster.dataLocation).pathname.slice(1);
      const wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: "busy" });
      await wf.startWorkflowExecution({ namespace: "busy", workflowId: "w", workflowType: "t", taskQueue: "q" });
    });
    afterAll(async () => {
      await admin.end({ timeout: 1 });
      await cluster.destroy();
    });

    test("ALockTimeoutIsUnavailableAndTheRetryLandsOnce", async () => {
      const holder = await admin.reserve();
      try {
        await holder`begin`;
        await holder`lock table executions, history_events in access exclusive mode`;
        await eventually(async () => expect(await answer("r-lock")).toStartWith("Unavailable: [unavailable] the database could not run the request now (55P03: "), { timeout: 10_000, interval: 50 });
        // Named with the setting that set the wait, as a statement timeout is (TestStatementTimeout).
        expect(await answer("r-lock")).toMatch(/\(55P03: canceling statement due to lock timeout, over persistence\.datastore\.postgres\.lockTimeoutMs \(or PostgreSQL's lock_timeout where that is 0\); request id [^)]+\); retry$/);
      } finally {
        await holder`rollback`;
        holder.release();
      }
      expect(await answer("r-lock")).toBe("ok");
      expect(await answer("r-lock")).toBe("ok");
      expect(await signalRequestIds()).toEqual(["r-lock"]);
    });

    test("ATransactionLeftOpenElsewhereHoldsOnlyTheWritesThatNeedItsRows: not, through the pool, the whole cluster", async () => {
      const wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: "elsewhere" });
      const holder = await admin.reserve();
      try {
        // A session idle in a transaction that updated run w's row.
        await holder`begin`;
        await holder`update executions set workflow_id = workflow_id where workflow_id = 'w'`;
        // More signals to w than the server has connections (8), none with a deadline of its own.
        const calls = Array.from({ length: 12 }, (_, i) => answer(`r-held-${i}`));
        const started = performance.now();
        const answers = await Promise.all(calls);
        expect(answers).toEqual(answers.map(() => expect.stringMatching(/^Unavailable: .*\(55P03: canceling statement due to lock timeout, over persistence\.datastore\.postgres\.lockTimeoutMs .*; request id /)));
        // Meanwhile, the rows no one holds take writes, from a pool the held writes gave back.
        const other = await wf.startWorkflowExecution({ namespace: "elsewhere", workflowId: "free", workflowType: "t", taskQueue: "q" }, { timeoutMs: 5000 });
        expect(other.runId).not.toBe("");
        expect(performance.now() - started).toBeLessThan(5000);
      } finally {
        await holder`rollback`;
        holder.release();
      }
      expect(await answer("r-held-0")).toBe("ok");
      expect((await signalRequestIds()).filter((id) => id.startsWith("r-held-"))).toEqual(["r-held-0"]);
    });

    test("ServerSessionsWaitTenSecondsForALockByDefault", async () => {
      const defaults = await startTestCluster({ store: "postgres" });
      try {
        expect(JSON.stringify(await defaults.server.database.db.execute(sql`show lock_timeout`))).toBe('[{"lock_timeout":"10s"}]');
      } finally {
        await defaults.destroy();
      }
    });

    test("AReadOnlyDatabaseIsUnavailableAndTheRetryLandsOnce", async () => {
      await setForServer("default_transaction_read_only", "on");
      await eventually(async () => expect(await answer("r-ro")).toMatch(/^Unavailable: .*\(25006: cannot execute [A-Z ]+ in a read-only transaction; request id [^)]+\); retry$/), { timeout: 10_000, interval: 50 });
      await setForServer("default_transaction_read_only", undefined);
      await eventually(async () => expect(await answer("r-ro")).toBe("ok"), { timeout: 10_000, interval: 50 });
      expect(await signalRequestIds()).toEqual(["r-lock", "r-held-0", "r-ro"]);
    });
  });

  // A passive cluster whose database cannot run its applies for a while (another transaction
  // holds the tables past the lock timeout; a read-only database fails the DLQ's writes too)
  // holds them, sends none to the DLQ, says why in its status, and catches up after.
  describe("a passive cluster's PostgreSQL busy for a while", () => {
    let a: TestCluster, b: TestCluster;
    let admin: postgres.Sql;
    beforeAll(async () => {
      [a, b] = await startClusters("postgres", [{}, { lockTimeoutMs: 100, serverOptions: { replication: { retry: { attempts: 2, backoffMs: 5 } } } }]);
      await connectAll([a, b]);
      admin = postgres(b.dataLocation, { max: 2, onnotice: () => {} });
    });
    afterAll(async () => {
      await admin.end({ timeout: 1 });
      await Promise.all([a.destroy(), b.destroy()]);
    });

    test("AppliesWaitForItAndNothingGoesToTheDlq", async () => {
      const nsId = await globalNamespace(a, b, "busy");
      const holder = await admin.reserve();
      const connection = async () => (await b.client(AdminService).getReplicationStatus({})).remotes.find((r) => r.clusterName === a.name)!.connectionState;
      try {
        await holder`begin`;
        await holder`lock table executions, history_events in access exclusive mode`;
        const wf = a.client(WorkflowService);
        for (let i = 0; i < 10; i++) await wf.startWorkflowExecution({ namespace: "busy", workflowId: `w-${i}`, workflowType: "t", taskQueue: "q" });
        await eventually(async () => expect(await connection()).toBe("error: 55P03: canceling statement due to lock timeout"), { timeout: 20_000, interval: 50 });
      } finally {
        await holder`rollback`;
        holder.release();
      }
      await eventually(async () => expect(await expectSameHistories(a, b, nsId)).toBe(10), { timeout: 20_000, interval: 100 });
      expect(await b.server.database.db.select().from(replicationDlq)).toEqual([]);
      await eventually(async () => expect(await connection()).toBe("connected"), { timeout: 10_000, interval: 50 });
    });
  });
}

// persistence.datastore.postgres.statementTimeoutMs: a statement of tern's that runs past it
// (here its wait for a row another session holds, which PostgreSQL counts as the statement's
// time, with no lock timeout of tern's) fails with an UNAVAILABLE naming the setting, the write
// rolled back, and the server goes on serving; migrations never take it.
if ((await testStores()).includes("postgres")) {
  describe("a statement past the statement timeout", () => {
    let cluster: TestCluster;
    let admin: postgres.Sql;
    beforeAll(async () => {
      cluster = await startTestCluster({ store: "postgres", lockTimeoutMs: 0, statementTimeoutMs: 300 });
      admin = postgres(cluster.dataLocation, { max: 1, onnotice: () => {} });
      const wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: "slow" });
      await wf.startWorkflowExecution({ namespace: "slow", workflowId: "w", workflowType: "t", taskQueue: "q" });
    });
    afterAll(async () => {
      await admin.end({ timeout: 1 });
      await cluster.destroy();
    });
    const signal = (requestId: string) =>
      cluster.client(WorkflowService).signalWorkflowExecution({ namespace: "slow", workflowExecution: { workflowId: "w" }, signalName: "s", requestId });

    test("TestStatementTimeout: the write fails naming the setting, and the server stays healthy", async () => {
      const holder = await admin.reserve();
      try {
        await holder`begin`;
        await holder`select * from executions where workflow_id = 'w' for update`;
        await rejects(signal("r-slow"), Code.Unavailable, "(57014: canceling statement due to statement timeout, over persistence.datastore.postgres.statementTimeoutMs (or PostgreSQL's statement_timeout where that is 0); request id ");
      } finally {
        await holder`rollback`;
        holder.release();
      }
      expect(await fetch(`${cluster.url}/health`).then((r) => r.json())).toEqual({ status: "SERVING" });
      await signal("r-slow");
      const { history } = await cluster.client(WorkflowService).getWorkflowExecutionHistory({ namespace: "slow", execution: { workflowId: "w" } });
      expect(history!.events.flatMap((e) => (e.attributes.case === "workflowExecutionSignaledEventAttributes" ? [e.attributes.value.requestId] : []))).toEqual(["r-slow"]);
    });

    test("TestMigrationsTakeNoStatementTimeout: tern admin db migrate's session runs a statement past it", async () => {
      const fresh = await createTestDatabase();
      let database: Database | undefined;
      try {
        // 1 s, not less: the open's own statements run under it (50 ms failed the open on a loaded host).
        database = await openDatabase({ postgres: { url: fresh.url } }, { statementTimeoutMs: 1_000 });
        const [server] = rowsOf(await database.db.execute(sql`show statement_timeout`));
        expect(server).toEqual({ statement_timeout: "1s" });
        const slept = await database.withExclusiveLock(async (db) => rowsOf(await db.execute(sql`select current_setting('lock_timeout') as lock_timeout, current_setting('statement_timeout') as statement_timeout from pg_sleep(1.2)`)));
        expect(slept).toEqual([{ lock_timeout: "10s", statement_timeout: "0" }]);
        expect((await migrateSchema(database, migrationsFolder)).length).toBeGreaterThan(0);
      } finally {
        await database?.close().catch(() => {});
        await fresh.drop();
      }
    });
  });
}
