import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { and, asc, eq } from "drizzle-orm";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { historyEvents, replicationAckLevels, timerTasks } from "../../src/persistence/schema";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { connectBothWays, expectSameHistories, globalNamespace } from "./support";

setDefaultTimeout(60_000);

const NS = "orders";
const hour = create(DurationSchema, { seconds: 3600n });
const pages = (x: TestCluster, path: string) =>
  Number(x.server.metrics.render().match(new RegExp(`replication_pages_applied\\{[^}]*path="${path}"[^}]*\\} (\\d+)`))?.[1] ?? 0);

for (const store of await testStores()) {
  describe(`pipelined apply on ${store} (one shard each way)`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    const wf = () => a.client(WorkflowService);
    const run = (workflowId: string) => ({ workflowId, runId: "" });
    const ackRow = and(
      eq(replicationAckLevels.remoteCluster, "clusterA"), eq(replicationAckLevels.direction, "inbound"),
      eq(replicationAckLevels.queue, "history"), eq(replicationAckLevels.shardId, 1),
    );
    const inboundAck = async () => (await b.server.database.db.select().from(replicationAckLevels).where(ackRow))[0]?.ackLevel ?? 0;
    const eventsOnB = async (workflowId: string) =>
      (await b.server.database.db.select().from(historyEvents).where(and(eq(historyEvents.namespaceId, nsId), eq(historyEvents.workflowId, workflowId))).orderBy(asc(historyEvents.eventId)))
        .map((e) => e.eventType);

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{ shards: 1 }, { shards: 1 }]);
      await connectBothWays(a, b);
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("OrdinaryPagesApplyInTwoRoundTrips: starts, signals, closes and timers replicate without the full path", async () => {
      for (const id of ["p1", "p2", "p3"]) {
        await wf().startWorkflowExecution({ namespace: NS, workflowId: id, workflowType: "T", taskQueue: "q", workflowExecutionTimeout: id === "p3" ? undefined : hour });
        await wf().signalWorkflowExecution({ namespace: NS, workflowExecution: run(id), signalName: "go", requestId: `go-${id}` });
      }
      await wf().completeWorkflowExecution({ namespace: NS, workflowExecution: run("p1") });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      // p2's timeout timer is kept on the passive side too; p1 closed, so its timer is gone; p3 has none.
      const timers = async (x: TestCluster) => (await x.server.database.db.select().from(timerTasks).where(eq(timerTasks.namespaceId, nsId))).map((t) => [t.workflowId, t.fireAt.getTime()]);
      expect(await timers(b)).toEqual(await timers(a));
      expect((await timers(b)).map(([id]) => id)).toEqual(["p2"]);
      expect(pages(b, "pipelined")).toBeGreaterThan(0);
      expect(pages(b, "full")).toBe(0);
    });

    test("APageWhoseAckMovedElsewhereWritesNothing: the ack check fails before COMMIT goes out", async () => {
      for (const id of ["m1", "m2", "m3"]) await wf().startWorkflowExecution({ namespace: NS, workflowId: id, workflowType: "T", taskQueue: "q" });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      const at = await inboundAck();
      // As if another process applied the shard's next two tasks: the stored ack moves on, not this process's position.
      await b.server.database.db.update(replicationAckLevels).set({ ackLevel: at + 2 }).where(ackRow);
      for (const id of ["m1", "m2", "m3"]) await wf().signalWorkflowExecution({ namespace: NS, workflowExecution: run(id), signalName: "late" });
      // The page from `at` is refused whole; the stream resumes from the stored ack and applies m3's signal only.
      await eventually(async () => expect(await eventsOnB("m3")).toEqual(["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_SIGNALED"]), { timeout: 15_000 });
      expect(await inboundAck()).toBe(at + 3);
      expect(await eventsOnB("m1")).toEqual(["WORKFLOW_EXECUTION_STARTED"]);
      expect(await eventsOnB("m2")).toEqual(["WORKFLOW_EXECUTION_STARTED"]);
    });
  });
}
