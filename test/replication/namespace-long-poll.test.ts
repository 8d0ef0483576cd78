import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { NAMESPACE_QUEUE_KEY, createNamespaceSender } from "../../replication/namespace-sender";
import { create } from "@bufbuild/protobuf";
import { GetNamespaceReplicationTasksRequestSchema } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createEventNotifier } from "../../src/history/notifier";
import { eq } from "drizzle-orm";
import { createNamespaceQueueWatch } from "../../replication/namespace-queue-watch";
import { createOutboxMarks } from "../../replication/outbox";
import { createReplicationSender } from "../../replication/sender";
import { StreamReplicationTasksRequestSchema } from "../../src/gen/tern/admin/v1/service_pb";
import { clusterMetadata } from "../../src/persistence/schema";
import { lastTaskIds, notedStatements } from "./support";
import { eventually } from "../support/eventually";
import { holdingReads } from "../support/holding-reads";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { answeredWithin, serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

for (const store of await testStores()) {
  describe(`namespace long poll on ${store}`, () => {
    let a: TestCluster;
    beforeAll(async () => {
      a = await startTestCluster({ store, name: "clusterA", enableGlobalNamespace: true });
    });
    afterAll(() => a.destroy());

    test("ATaskCommittedWhileThePollReadsTheQueueWakesIt (no wait for the re-read)", async () => {
      const wake = createEventNotifier();
      const hold = { on: false, ms: 400, held: 0 };
      const sender = createNamespaceSender({ db: holdingReads(a.server.database.db, hold), currentCluster: a.name, wake, pollMs: 10_000 });
      const wf = a.client(WorkflowService);
      await wf.registerNamespace({ namespace: "first", isGlobalNamespace: true, clusters: ["clusterA"] });
      const req = (after: bigint, waitTimeoutMs: number) => create(GetNamespaceReplicationTasksRequestSchema, { afterTaskId: after, waitTimeoutMs, pageSize: 10 });
      const maxTaskId = (await sender.getTasks(req(0n, 0))).maxTaskId ?? 0n;
      expect(maxTaskId).toBeGreaterThan(0n);

      hold.on = true;
      const t0 = performance.now();
      const polled = sender.getTasks(req(maxTaskId, 15_000)).then((r) => ({ r, at: performance.now() - t0 }));
      // The poll's read of the queue has its answer (no new task yet) and holds it: commit one now.
      await eventually(() => expect(hold.held).toBeGreaterThan(0), { interval: 5 });
      hold.on = false;
      await wf.registerNamespace({ namespace: "second", isGlobalNamespace: true, clusters: ["clusterA"] });
      wake.notify(NAMESPACE_QUEUE_KEY);
      const { r, at } = await polled;
      expect((r.tasks ?? []).map((t) => t.namespace?.namespaceInfo?.name)).toEqual(["second"]);
      // Not the 10 s re-read.
      expect(at).toBeLessThan(3_000);
    });

    test("AnIdlePollLeavesItsRereadsToTheHistorySendersWhileTheyRun, and a commit another process made still comes", async () => {
      // clusterY known here, so that a history stream of its is served; the namespace sender's
      // notifier hears nothing of A's commits: to it they are another process's.
      const db = a.server.database.db;
      const [self] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, true));
      await db.insert(clusterMetadata).values({ ...self!, clusterName: "clusterY", clusterId: "y", isCurrent: false, initialFailoverVersion: 8 });
      const wake = createEventNotifier();
      const watch = createNamespaceQueueWatch(wake, NAMESPACE_QUEUE_KEY);
      const { db: watched, ran } = notedStatements(db);
      const namespaceSender = createNamespaceSender({ db: watched, currentCluster: a.name, wake, pollMs: 150, watch });
      const { db: historyDb, ran: historyRan } = notedStatements(db);
      const historySender = createReplicationSender({ db: historyDb, cluster: a.server.cluster, notifier: createEventNotifier(), outboxMarks: createOutboxMarks(), recheckMs: 50, namespaceQueue: watch });
      const shardIds = Array.from({ length: a.config.persistence.numHistoryShards }, (_, i) => i + 1);
      const last = await lastTaskIds(a);
      const after = shardIds.map((id) => BigInt(last.get(id) ?? 0));
      const streamEnd = new AbortController();
      const stream = historySender.streamReplicationTasks(create(StreamReplicationTasksRequestSchema, {
        clusterName: "clusterY", cursors: { shardIds, afterTaskIds: after, ackedTaskIds: after }, waitTimeoutMs: 30_000,
      }), streamEnd.signal);
      const wf = a.client(WorkflowService);
      try {
        await stream.next();
        const idle = stream.next();
        const maxTaskId = (await namespaceSender.getTasks(create(GetNamespaceReplicationTasksRequestSchema, { afterTaskId: 0n, waitTimeoutMs: 0 }))).maxTaskId ?? 0n;
        const queueReads = () => ran.filter((r) => r.sql.includes("queue_counters")).length;
        const readsBefore = queueReads();
        const polled = namespaceSender.getTasks(create(GetNamespaceReplicationTasksRequestSchema, { afterTaskId: maxTaskId, waitTimeoutMs: 30_000, pageSize: 10 }));
        // Sixty re-reads of the idle history stream (recheckMs 50), each with the queue's max: the
        // poll's ticks (pollMs 150, twenty or more meanwhile) read nothing; before, each read the queue.
        const historyRereads = () => historyRan.filter((r) => r.sql.includes("namespace_max")).length;
        const rereadsFrom = historyRereads();
        await eventually(() => expect(historyRereads() - rereadsFrom).toBeGreaterThanOrEqual(60), { timeout: answeredWithin(3_000) });
        expect(queueReads() - readsBefore).toBeLessThan(5);
        await wf.registerNamespace({ namespace: "elsewhere", isGlobalNamespace: true, clusters: ["clusterA"] });
        const r = await polled;
        expect((r.tasks ?? []).map((t) => t.namespace?.namespaceInfo?.name)).toEqual(["elsewhere"]);
        void idle.catch(() => {});
      } finally {
        streamEnd.abort();
        await stream.return(undefined);
        await historySender.stop();
        await namespaceSender.stop();
        await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, "clusterY"));
      }
    });
  });
}
