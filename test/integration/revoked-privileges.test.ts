import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import postgres from "postgres";
import { startPrivatePostgres, type PrivatePostgres } from "../../bench/lib/private-postgres";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { replicationDlq } from "../../src/persistence/schema";
import { connectAll } from "../failover/mesh";
import { expectSameHistories, globalNamespace } from "../replication/support";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const ROLE = "tern_server";

// A server's database role losing a privilege on tern's tables while the server runs (an
// operator's REVOKE, a role rotated to one granted less; a start checks them, privileges.ts):
// not the fault of the writes or replication tasks that need it. A write is a retryable
// UNAVAILABLE naming 42501, not INTERNAL; a passive cluster's applies wait for the grant, its
// replication status saying why, and none goes to the DLQ (each went there after its retries,
// every task of a run behind it too, left for an operator to merge); granted again, it catches up.
describe.if((await testStores()).includes("postgres"))("a role losing a privilege while the server runs", () => {
  // A PostgreSQL of the test's own: a role is the server's, not the database's.
  let pg: PrivatePostgres;
  let a: TestCluster, b: TestCluster;
  /** A superuser session on B's database, which owns tern's tables there. */
  let bOwner: postgres.Sql;
  beforeAll(async () => {
    pg = await startPrivatePostgres();
    const server = postgres(pg.url("postgres"), { max: 1, onnotice: () => {} });
    await server.unsafe("create database tern_a");
    await server.unsafe("create database tern_b");
    await server.unsafe(`create role ${ROLE} login`);
    await server.end({ timeout: 1 });
    // B's tables made by their owner (its first start migrates them), then served by a role granted what tern needs.
    const clusterB = { store: "postgres" as const, name: "clusterB", initialFailoverVersion: 2, serverOptions: { replication: { retry: { attempts: 2, backoffMs: 5 } } } };
    await (await startTestCluster({ ...clusterB, dataLocation: pg.url("tern_b") })).stop();
    bOwner = postgres(pg.url("tern_b"), { max: 1, onnotice: () => {} });
    await bOwner.unsafe(`grant usage on schema public, drizzle to ${ROLE}; grant select on all tables in schema drizzle to ${ROLE}`);
    await bOwner.unsafe(`grant select, insert, update, delete on all tables in schema public to ${ROLE}`);
    const asRole = new URL(pg.url("tern_b"));
    asRole.username = ROLE;
    a = await startTestCluster({ store: "postgres", name: "clusterA", initialFailoverVersion: 1, dataLocation: pg.url("tern_a") });
    b = await startTestCluster({ ...clusterB, dataLocation: asRole.toString() });
    await connectAll([a, b]);
  });
  afterAll(async () => {
    await bOwner?.end({ timeout: 1 });
    await Promise.all([a?.stop(), b?.stop()]);
    await pg?.stop();
  });

  test("TestPrivilegeRevokedUnderARunningServer: writes UNAVAILABLE naming 42501, applies wait for the grant and none goes to the DLQ", async () => {
    const nsId = await globalNamespace(a, b, "orders");
    await b.client(WorkflowService).registerNamespace({ namespace: "local" });
    const connection = async () => (await b.client(AdminService).getReplicationStatus({})).remotes.find((r) => r.clusterName === a.name)!.connectionState;
    await bOwner.unsafe(`revoke insert on history_events from ${ROLE}`);
    const start = (x: TestCluster, namespace: string, workflowId: string) => x.client(WorkflowService).startWorkflowExecution({ namespace, workflowId, workflowType: "t", taskQueue: "q" });
    await rejects(start(b, "local", "w"), Code.Unavailable, "the database could not run the request now (42501: permission denied for table history_events, a privilege tern's database role lacks; request id ");
    for (let i = 0; i < 10; i++) await start(a, "orders", `w-${i}`);
    await eventually(async () => expect(await connection()).toBe("error: 42501: permission denied for table history_events"), { timeout: 20_000, interval: 50 });
    await bOwner.unsafe(`grant insert on history_events to ${ROLE}`);
    await eventually(async () => expect(await expectSameHistories(a, b, nsId)).toBe(10), { timeout: 20_000, interval: 100 });
    expect(await b.server.database.db.select().from(replicationDlq)).toEqual([]);
    await eventually(async () => expect(await connection()).toBe("connected"), { timeout: 10_000, interval: 50 });
    expect((await start(b, "local", "w")).started).toBe(true);
  });
});
