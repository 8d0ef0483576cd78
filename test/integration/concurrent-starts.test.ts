import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import postgres from "postgres";
import { eventually } from "../support/eventually";
import { startTestCluster, newDataLocation, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const started: TestCluster[] = [];
const removals: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of started) await c.stop();
  for (const remove of removals) await remove();
});

/** Starts servers named names at once on one new PostgreSQL database; each start's outcome. */
async function startAtOnce(names: string[]): Promise<PromiseSettledResult<TestCluster>[]> {
  const { location, remove } = await newDataLocation("postgres");
  removals.push(remove);
  const outcomes = await Promise.allSettled(names.map((name) => startTestCluster({ store: "postgres", name, dataLocation: location })));
  for (const o of outcomes) if (o.status === "fulfilled") started.push(o.value);
  return outcomes;
}

// Servers of a cluster started together (a deployment's replicas) on a database none has started
// on yet: the migrations take turns under their lock, and so does the cluster's identity.
describe.if((await testStores()).includes("postgres"))("servers started at once on one new database", () => {
  test("TestReplicasStartingAtOnce: every one starts, all with the one identity the first persisted", async () => {
    const outcomes = await startAtOnce(["clusterA", "clusterA", "clusterA"]);
    expect(outcomes.map((o) => (o.status === "rejected" ? String(o.reason) : "started"))).toEqual(["started", "started", "started"]);
    const ids = outcomes.map((o) => (o as PromiseFulfilledResult<TestCluster>).value.server.cluster.clusterId);
    expect(new Set(ids).size).toBe(1);
  });

  test("TestTwoClustersStartingAtOnceOnOneDatabase: one starts, the other is refused naming the cluster the database holds", async () => {
    const outcomes = await startAtOnce(["clusterA", "clusterB"]);
    const refused = outcomes.flatMap((o) => (o.status === "rejected" ? [String(o.reason)] : []));
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatch(/clusterMetadata\.currentClusterName is cluster[AB] in the config but cluster[AB] in the database/);
  });
});

// A database whose own lock_timeout and statement_timeout are short (an operator's guard for
// its applications): a server starting while another's migrations hold the migration lock
// waits for them, as long as they take, rather than failing at the database's timeout.
describe.if((await testStores()).includes("postgres"))("a start waiting for another server's migrations", () => {
  test("TestMigrationLockOutwaitsTheDatabasesTimeouts: the start waits past lock_timeout and statement_timeout, and starts", async () => {
    const { location, remove } = await newDataLocation("postgres");
    removals.push(remove);
    const admin = postgres(location, { max: 2, onnotice: () => {} });
    const dbName = new URL(location).pathname.slice(1);
    await admin.unsafe(`alter database ${dbName} set lock_timeout = '100ms'`);
    await admin.unsafe(`alter database ${dbName} set statement_timeout = '1s'`);
    // The migration lock, as another server's migrations hold it.
    const holder = await admin.reserve();
    await holder`select pg_advisory_lock(727376)`;
    let outcome: string | undefined;
    const starting = startTestCluster({ store: "postgres", dataLocation: location }).then(
      (c) => void (started.push(c), (outcome = "started")),
      (e) => void (outcome = String(e)),
    );
    try {
      // Waiting for the lock past both timeouts, and still starting.
      await eventually(async () => {
        expect(outcome).toBeUndefined();
        const [waiting] = await admin`select 1 from pg_stat_activity where datname = ${dbName} and application_name = 'tern-migrate' and wait_event_type = 'Lock' and now() - query_start > interval '1500 ms'`;
        expect(waiting).toBeDefined();
      }, { timeout: 15_000, interval: 50 });
    } finally {
      await holder`select pg_advisory_unlock(727376)`;
      holder.release();
      await admin.end({ timeout: 1 });
    }
    await starting;
    expect(outcome).toBe("started");
  });
});
