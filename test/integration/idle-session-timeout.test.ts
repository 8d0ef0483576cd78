import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { ConnectError } from "@connectrpc/connect";
import postgres from "postgres";
import { ulid } from "ulid";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { openDatabase } from "../../src/persistence/database";
import { testEnv } from "../support/env";
import { createTestDatabase } from "../support/postgres";
import { startTestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const removals: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const remove of removals.reverse()) await remove().catch(() => {});
});

/** A new database owned by a new login role whose sessions PostgreSQL ends after 1 s idle; its URL as that role, and an admin session on it. */
async function databaseOfAnIdleTimeoutRole(): Promise<{ url: string; admin: postgres.Sql }> {
  const role = `tern_pgx_role_${ulid().toLowerCase()}`;
  const server = postgres(testEnv.postgresUrl, { max: 1, onnotice: () => {} });
  await server.unsafe(`create role ${role} login; alter role ${role} set idle_session_timeout = '1s'`);
  // Dropped after its database (removals run last first).
  removals.push(async () => {
    await server.unsafe(`drop role if exists ${role}`);
    await server.end({ timeout: 1 });
  });
  const database = await createTestDatabase();
  removals.push(database.drop);
  const admin = postgres(database.url, { max: 1, onnotice: () => {} });
  removals.push(() => admin.end({ timeout: 1 }));
  await admin.unsafe(`alter database ${new URL(database.url).pathname.slice(1)} owner to ${role}`);
  const url = new URL(database.url);
  url.username = role;
  return { url: url.toString(), admin };
}

/** tern's connections to admin's database idle (no statement on them) for longer than ms. */
const idleLongerThan = async (admin: postgres.Sql, ms: number) =>
  (await admin`select count(*)::int as n from pg_stat_activity where datname = current_database() and application_name like 'tern%'
    and state = 'idle' and now() - state_change > make_interval(secs => ${ms / 1000})`)[0]!.n as number;

// A role or database with an idle_session_timeout (an operator's, to close sessions left idle):
// PostgreSQL closed tern's pooled connections when they were idle that long, and a statement
// sent on one as it did met a reset connection: its request failed (UNAVAILABLE) now and then.
// tern's sessions set it to 0 for themselves, and the pools close their idle connections.
describe.if((await testStores()).includes("postgres"))("a role whose sessions PostgreSQL ends when idle", () => {
  test("TestRequestsSpacedPastTheIdleSessionTimeout: none fails, and idle connections are closed all the same", async () => {
    const { url, admin } = await databaseOfAnIdleTimeoutRole();
    const c = await startTestCluster({ store: "postgres", dataLocation: url });
    removals.push(() => c.stop());
    const wf = c.client(WorkflowService);
    await wf.registerNamespace({ namespace: "ns" });
    await wf.startWorkflowExecution({ namespace: "ns", workflowId: "w", workflowType: "t", taskQueue: "q" });
    const failures: string[] = [];
    let sent = 0;
    // Rounds of 8 signals at once (a connection each), spaced across the timeout: each round's
    // connections went idle about that long before, the moment PostgreSQL closed them.
    for (let spaceMs = 960; spaceMs < 1040; spaceMs += 4) {
      await Bun.sleep(spaceMs);
      await Promise.all(Array.from({ length: 8 }, async (_, i) => {
        const requestId = `r-${spaceMs}-${i}`;
        sent++;
        await wf.signalWorkflowExecution({ namespace: "ns", workflowExecution: { workflowId: "w" }, signalName: "s", requestId })
          .catch((e) => failures.push(`${requestId}: ${ConnectError.from(e).message}`));
      }));
    }
    expect(failures).toEqual([]);
    const { history } = await wf.getWorkflowExecutionHistory({ namespace: "ns", execution: { workflowId: "w" }, maximumPageSize: 1000 });
    expect(history!.events.filter((e) => e.attributes.case === "workflowExecutionSignaledEventAttributes")).toHaveLength(sent);
    // The role's timeout still holds for tern's connections: none stays idle much longer.
    await Bun.sleep(2_500); // idle past the timeout
    expect(await idleLongerThan(admin, 2_000)).toBe(0);
  });

  test("TestSessionLockHeldPastTheIdleSessionTimeout: a lock's session idle past the timeout keeps its lock", async () => {
    // A graceful failover's lock session sits idle while the failover waits for its target:
    // PostgreSQL ended it, and the lock with it, after 1 s.
    const { url, admin } = await databaseOfAnIdleTimeoutRole();
    const database = await openDatabase({ postgres: { url } });
    removals.push(() => database.close());
    const key = "tern-pgx-idle-lock";
    const held = await database.withSessionLock(key, async () => {
      await Bun.sleep(2_000); // idle past the timeout
      return (await admin`select not pg_try_advisory_lock(hashtextextended(${key}, 0)) as held`)[0]!.held as boolean;
    }, () => new Error("taken"));
    expect(held).toBe(true);
  });
});
