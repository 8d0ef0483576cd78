import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { replicationDlq } from "../../src/persistence/schema";
import { eventually } from "../support/eventually";
import { startTestCluster, type TestCluster } from "../support/server";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

describe("replication_dlq_size without an event that reads it", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await startTestCluster({ store: "pglite", name: "clusterB", initialFailoverVersion: 2, serverOptions: { replication: { dlqGaugeIntervalMs: 200 } } });
  });
  afterAll(() => c.destroy());

  const gauged = () => c.server.metrics.render().split("\n").filter((l) => l.startsWith("replication_dlq_size{"));

  test("TestDlqGaugeIsReadAgainPeriodically: an entry no refresh saw (as after a failed read) is shown within the interval", async () => {
    expect(gauged()).toEqual([]);
    // Written past the DLQ (no add, merge, purge or delete reads the gauge after it): as stale as a gauge whose read failed.
    const entry = { sourceCluster: "clusterA", shardId: 1, taskId: 7, namespaceId: "ns", workflowId: "w", runId: "r", firstEventId: 1, nextEventId: 2, version: 1, attempts: 3, lastError: "x" };
    await c.server.database.db.insert(replicationDlq).values(entry);
    // Before: it stayed [] until a task went to the DLQ, a merge, a purge, a delete or a remote's change.
    await eventually(() => expect(gauged()).toEqual(['replication_dlq_size{source_cluster="clusterA"} 1']), { timeout: 3_000 });
    await c.server.database.db.delete(replicationDlq);
    await eventually(() => expect(gauged()).toEqual([]), { timeout: 3_000 });
  });
});
