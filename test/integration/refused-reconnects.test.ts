import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { sql } from "drizzle-orm";
import postgres from "postgres";
import { startPrivatePostgres, type PrivatePostgres } from "../../bench/lib/private-postgres";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const ROLE = "tern_server";

// A running server whose PostgreSQL refuses its new connections (other sessions hold every slot
// its role, its database or the server allows; the database renamed or dropped): the writes
// meanwhile are a retryable UNAVAILABLE naming PostgreSQL's code and reason, which said only
// "lost or refused", as for a database that does not answer; once a slot is free they land.
// And one whose database is made again empty under it says so in its health.
describe.if((await testStores()).includes("postgres"))("a running server's PostgreSQL refusing its connections", () => {
  // A PostgreSQL of the test's own: a role's connection limit binds only roles that are not superusers.
  let pg: PrivatePostgres;
  let server: postgres.Sql;
  let cluster: TestCluster;
  beforeAll(async () => {
    pg = await startPrivatePostgres();
    server = postgres(pg.url("postgres"), { max: 1, onnotice: () => {} });
    await server.unsafe(`create role ${ROLE} login`);
    await server.unsafe(`create database tern owner ${ROLE}`);
    const url = new URL(pg.url("tern"));
    url.username = ROLE;
    cluster = await startTestCluster({ store: "postgres", dataLocation: url.toString() });
    await cluster.client(WorkflowService).registerNamespace({ namespace: "ns" });
    await cluster.client(WorkflowService).startWorkflowExecution({ namespace: "ns", workflowId: "w", workflowType: "t", taskQueue: "q" });
  });
  afterAll(async () => {
    await cluster?.stop();
    await server?.end({ timeout: 1 });
    await pg?.stop();
  });

  test("TestNoConnectionSlotWhileServing: writes UNAVAILABLE naming 53300, and they land once a slot is free", async () => {
    const signal = (requestId: string) => cluster.client(WorkflowService).signalWorkflowExecution({ namespace: "ns", workflowExecution: { workflowId: "w" }, signalName: "s", requestId });
    // As if other sessions held every slot the role has: its reconnects are refused.
    await server.unsafe(`alter role ${ROLE} connection limit 0`);
    await server`select pg_terminate_backend(pid) from pg_stat_activity where usename = ${ROLE}`;
    await eventually(() => rejects(signal("r"), Code.Unavailable, `the database connection was lost or refused (53300: too many connections for role "${ROLE}"; request id `), { timeout: 10_000, interval: 50 });
    await server.unsafe(`alter role ${ROLE} connection limit -1`);
    await eventually(() => signal("r"), { timeout: 10_000, interval: 50 });
    const { history } = await cluster.client(WorkflowService).getWorkflowExecutionHistory({ namespace: "ns", execution: { workflowId: "w" } });
    expect(history!.events.filter((e) => e.attributes.case === "workflowExecutionSignaledEventAttributes").length).toBe(1);
  });

  test("TestDatabaseMadeAgainEmptyUnderTheServer: /health NOT_SERVING, not SERVING while every request fails there", async () => {
    // Dropped, then made again by a provisioning tool that saw it missing: it answers `select 1`, and holds no table of tern's.
    await server.unsafe("drop database tern with (force)");
    await server.unsafe(`create database tern owner ${ROLE}`);
    await eventually(() => cluster.server.database.db.execute(sql`select 1`), { timeout: 10_000, interval: 50 });
    const health = await fetch(`${cluster.url}/health`);
    expect([health.status, await health.json()]).toEqual([503, { status: "NOT_SERVING" }]);
  });
});
