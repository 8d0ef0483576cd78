import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import postgres from "postgres";
import { ulid } from "ulid";
import { testEnv } from "../support/env";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { newDataLocation, startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { createTestDatabase } from "../support/postgres";
import { startPrivatePostgres } from "../../bench/lib/private-postgres";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const removals: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const remove of removals) await remove();
});

/** A new PostgreSQL database a server has started and stopped on (migrated, its identity persisted), and an admin session on it. */
async function startedDatabase(): Promise<{ location: string; dbName: string; admin: postgres.Sql }> {
  const { location, remove } = await newDataLocation("postgres");
  removals.push(remove);
  await (await startTestCluster({ store: "postgres", dataLocation: location })).stop();
  const admin = postgres(location, { max: 1, onnotice: () => {} });
  removals.push(() => admin.end({ timeout: 1 }));
  return { location, dbName: new URL(location).pathname.slice(1), admin };
}

/** A login role of its own (dropped after the tests), and location as that role. */
async function asNewRole(location: string): Promise<{ role: string; url: string }> {
  const role = `tern_test_role_${ulid().toLowerCase()}`;
  const server = postgres(testEnv.postgresUrl, { max: 1, onnotice: () => {} });
  await server.unsafe(`create role ${role} login`);
  // After the databases it was granted on are dropped (removals run in order).
  removals.push(async () => {
    await server.unsafe(`drop role if exists ${role}`);
    await server.end({ timeout: 1 });
  });
  const url = new URL(location);
  url.username = role;
  return { role, url: url.toString() };
}

/** A new database with this encoding, removed after the tests. */
async function databaseEncoded(encoding: string): Promise<{ location: string; admin: postgres.Sql }> {
  const database = await createTestDatabase("tern_test", encoding);
  const admin = postgres(database.url, { max: 1, onnotice: () => {} });
  removals.push(async () => {
    await admin.end({ timeout: 1 });
    await database.drop();
  });
  return { location: database.url, admin };
}

/** What a start on location says: "started", or its error's message. */
async function startOutcome(location: string): Promise<string> {
  let c: TestCluster | undefined;
  try {
    c = await startTestCluster({ store: "postgres", dataLocation: location });
    return "started";
  } catch (e) {
    return (e as Error).message;
  } finally {
    await c?.stop();
  }
}

// A database a server cannot start on says why in the start's error, with PostgreSQL's code and
// reason, never as the statement it refused with its parameters.
describe.if((await testStores()).includes("postgres"))("a start the database refuses", () => {
  test("TestStartOnAReadOnlyDatabase: refused with PostgreSQL's reason, not the statement", async () => {
    // As a standby after a failover, or a database an operator switched read-only.
    const { location, dbName, admin } = await startedDatabase();
    await admin.unsafe(`alter database ${dbName} set default_transaction_read_only = on`);
    const outcome = await startOutcome(location);
    expect(outcome).toMatch(/^the database refused a statement \(25006: cannot execute [A-Z ]+ in a read-only transaction\)$/);
  });

  test("TestStartByARoleLackingPrivilegesOnSomeTables: refused naming the tables and privileges, not started to fail requests INTERNAL", async () => {
    const { location, dbName, admin } = await startedDatabase();
    const { role, url } = await asNewRole(location);
    // Granted tern's tables, but for one it may only read and one it may not delete from.
    await admin.unsafe(`grant connect on database ${dbName} to ${role}; grant usage on schema public, drizzle to ${role}`);
    await admin.unsafe(`grant select, insert, update, delete on all tables in schema public to ${role}; grant select on all tables in schema drizzle to ${role}`);
    await admin.unsafe(`revoke insert, update, delete on history_events from ${role}; revoke delete on timer_tasks from ${role}`);
    const outcome = await startOutcome(url);
    expect(outcome).toBe(
      `the database role ${role} lacks privileges tern needs on its tables: INSERT, UPDATE, DELETE on history_events; DELETE on timer_tasks; ` +
        `grant them (GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ... TO ${role})`,
    );
    // Granted them, it starts.
    await admin.unsafe(`grant insert, update, delete on history_events, timer_tasks to ${role}`);
    expect(await startOutcome(url)).toBe("started");
  });

  test("TestStartOnALatin1Database: refused naming the encoding, before anything is made in it", async () => {
    // Where it started, text outside LATIN1 was refused, and a peer's replicated here went to the DLQ.
    const { location, admin } = await databaseEncoded("LATIN1");
    const outcome = await startOutcome(location);
    expect(outcome).toMatch(/^the database tern_test_\w+ is encoded LATIN1, which cannot hold all the text tern stores .*; tern needs a UTF8 database \(CREATE DATABASE \.\.\. ENCODING 'UTF8' TEMPLATE template0\)$/);
    expect((await admin`select to_regclass('cluster_metadata') as t`)[0]!.t).toBeNull();
  });

  test("TestStartOnASqlAsciiDatabase: starts, and keeps text outside ASCII as it was sent", async () => {
    const { location } = await databaseEncoded("SQL_ASCII");
    const c = await startTestCluster({ store: "postgres", dataLocation: location });
    try {
      const wf = c.client(WorkflowService);
      await wf.registerNamespace({ namespace: "ns" });
      await wf.startWorkflowExecution({ namespace: "ns", workflowId: "w-€-😀", workflowType: "t", taskQueue: "q" });
      await wf.signalWorkflowExecution({ namespace: "ns", workflowExecution: { workflowId: "w-€-😀" }, signalName: "ñ-€" });
      const { history } = await wf.getWorkflowExecutionHistory({ namespace: "ns", execution: { workflowId: "w-€-😀" } });
      const signals = history!.events.flatMap((e) => (e.attributes.case === "workflowExecutionSignaledEventAttributes" ? [e.attributes.value.signalName] : []));
      expect(signals).toEqual(["ñ-€"]);
    } finally {
      await c.stop();
    }
  });

  test("TestStartWithoutAFreeConnectionSlot: refused saying PostgreSQL has no connection slot free, and what to do", async () => {
    // An instance of the test's own with 3 slots for roles that are not superusers.
    const pg = await startPrivatePostgres({ max_connections: 6, superuser_reserved_connections: 3 });
    removals.push(pg.stop);
    const admin = postgres(pg.url("postgres"), { max: 1, onnotice: () => {} });
    await admin.unsafe(`create role tern_pgx_role_slots login`);
    await admin.unsafe(`create database tern_slots owner tern_pgx_role_slots`);
    await admin.end({ timeout: 1 });
    const url = new URL(pg.url("tern_slots"));
    url.username = "tern_pgx_role_slots";
    /** Sessions of the role that hold n of its slots. */
    const holding = async (n: number) => {
      const held = Array.from({ length: n }, () => postgres(url.toString(), { max: 1, onnotice: () => {} }));
      await Promise.all(held.map((h) => h`select 1`));
      return () => Promise.all(held.map((h) => h.end({ timeout: 1 })));
    };
    const refused = /^the PostgreSQL server has no free connection slot for tern \(53300: remaining connection slots are reserved for non-replication superuser connections\): a tern server opens up to persistence\.datastore\.postgres\.maxConnections \(8\) connections .* Raise the limit PostgreSQL names, end the sessions that hold its slots, or lower maxConnections; then start again$/;
    // None free: its first connection is refused (it said only PostgreSQL's reason).
    let release = await holding(3);
    expect(await startOutcome(url.toString())).toMatch(refused);
    await release();
    // One free: its first connection is made, and its migrations' lock is refused (it said
    // `the database refused a statement (53300: ...)`).
    release = await holding(2);
    expect(await startOutcome(url.toString())).toMatch(refused);
    await release();
    expect(await startOutcome(url.toString())).toBe("started");
  });
});
