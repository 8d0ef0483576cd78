import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import postgres from "postgres";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { replicationDlq } from "../../src/persistence/schema";
import { connectAll, startClusters } from "../failover/mesh";
import { expectSameHistories, globalNamespace } from "../replication/support";
import { eventually } from "../support/eventually";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

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
      cluster = await startTestCluster({ store: "postgres" });
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
      await setForServer("lock_timeout", "200ms");
      const holder = await admin.reserve();
      try {
        await holder`begin`;
        await holder`lock table executions, history_events in access exclusive mode`;
        // The first answers after the termination may be the lost connections' own.
        await eventually(async () => expect(await answer("r-lock")).toStartWith("Unavailable: [unavailable] the database could not run the request now (55P03: "), { timeout: 10_000, interval: 50 });
        expect(await answer("r-lock")).toMatch(/\(55P03: canceling statement due to lock timeout; request id [^)]+\); retry$/);
      } finally {
        await holder`rollback`;
        holder.release();
      }
      expect(await answer("r-lock")).toBe("ok");
      expect(await answer("r-lock")).toBe("ok");
      expect(await signalRequestIds()).toEqual(["r-lock"]);
      await setForServer("lock_timeout", undefined);
    });

    test("AReadOnlyDatabaseIsUnavailableAndTheRetryLandsOnce", async () => {
      await setForServer("default_transaction_read_only", "on");
      await eventually(async () => expect(await answer("r-ro")).toMatch(/^Unavailable: .*\(25006: cannot execute [A-Z ]+ in a read-only transaction; request id [^)]+\); retry$/), { timeout: 10_000, interval: 50 });
      await setForServer("default_transaction_read_only", undefined);
      await eventually(async () => expect(await answer("r-ro")).toBe("ok"), { timeout: 10_000, interval: 50 });
      expect(await signalRequestIds()).toEqual(["r-lock", "r-ro"]);
    });
  });

  // A passive cluster whose database cannot run its applies for a while (another transaction
  // holds the tables past the lock timeout; a read-only database fails the DLQ's writes too)
  // holds them, sends none to the DLQ, says why in its status, and catches up after.
  describe("a passive cluster's PostgreSQL busy for a while", () => {
    let a: TestCluster, b: TestCluster;
    let admin: postgres.Sql;
    beforeAll(async () => {
      [a, b] = await startClusters("postgres", [{}, { serverOptions: { replication: { retry: { attempts: 2, backoffMs: 5 } } } }]);
      await connectAll([a, b]);
      admin = postgres(b.dataLocation, { max: 2, onnotice: () => {} });
    });
    afterAll(async () => {
      await admin.end({ timeout: 1 });
      await Promise.all([a.destroy(), b.destroy()]);
    });

    test("AppliesWaitForItAndNothingGoesToTheDlq", async () => {
      const nsId = await globalNamespace(a, b, "busy");
      const bName = new URL(b.dataLocation).pathname.slice(1);
      await admin.unsafe(`alter database ${bName} set lock_timeout = '100ms'`);
      await admin`select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`;
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
