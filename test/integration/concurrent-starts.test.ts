import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { startTestCluster, newDataLocation, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

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
