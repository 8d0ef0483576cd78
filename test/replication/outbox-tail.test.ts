import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { toJson } from "@bufbuild/protobuf";
import { createOutboxTail, estimateEventBytes, type CommittedTask } from "../../replication/outbox-tail";
import { createReplicationSender } from "../../replication/sender";
import { AdminService, ReplicationTaskSchema, type GetReplicationTasksResponse } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createEventNotifier } from "../../src/history/notifier";
import { startClusters } from "../failover/mesh";
import { json } from "../support/payload";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const task = (taskId: number, o: Partial<CommittedTask> = {}): CommittedTask => {
  const events = o.events ?? [{ attributes: { case: "markerRecordedEventAttributes", value: { markerName: "m" } as never } }];
  return {
    shardId: 1, taskId, namespaceId: "ns", workflowId: `w${taskId}`, runId: `r${taskId}`, firstEventId: 1, nextEventId: 2, version: 1,
    versionHistory: [{ eventId: 1, version: 1 }], createdAt: new Date(0), clusters: ["clusterA", "clusterB"], eventTime: new Date(0),
    events, eventBytes: estimateEventBytes(events),
    ...o,
  };
};
const ids = (page?: { tasks: { taskId?: bigint }[] }) => page?.tasks.map((t) => Number(t.taskId));

describe("outbox tail", () => {
  test("ServesOnlyAnUnbrokenRunOfIdsAfterThePosition", () => {
    const tail = createOutboxTail({ currentCluster: "clusterA" });
    tail.committed([task(1), task(2), task(4)]);
    expect(ids(tail.page(1, 0, 10, "clusterB"))).toEqual([1, 2]);
    expect(tail.page(1, 0, 10, "clusterB")?.last).toBe(2);
    expect(ids(tail.page(1, 1, 1, "clusterB"))).toEqual([2]);
    // Task 3 was committed elsewhere (or never heard of here): the database answers.
    expect(tail.page(1, 2, 10, "clusterB")).toBeUndefined();
    expect(tail.page(2, 0, 10, "clusterB")).toBeUndefined();
    // Committed out of order in this process: served once the hole fills.
    tail.committed([task(3)]);
    expect(ids(tail.page(1, 2, 10, "clusterB"))).toEqual([3, 4]);
  });

  test("StopsAPageOnceItsTasksHoldMaxBytes, the first task always served", () => {
    const tail = createOutboxTail({ currentCluster: "clusterA" });
    const signal = (taskId: number, bytes: number) => task(taskId, {
      events: [{ attributes: { case: "workflowExecutionSignaledEventAttributes", value: { signalName: "s", input: { payloads: [{ metadata: {}, data: new Uint8Array(bytes) }] } } as never } }],
    });
    tail.committed([signal(1, 600_000), signal(2, 600_000), signal(3, 600_000)]);
    expect(ids(tail.page(1, 0, 10, "clusterB", 1_000_000))).toEqual([1, 2]);
    expect(tail.page(1, 0, 10, "clusterB", 1_000_000)?.last).toBe(2);
    expect(ids(tail.page(1, 0, 10, "clusterB", 1))).toEqual([1]);
    expect(ids(tail.page(1, 0, 10, "clusterB"))).toEqual([1, 2, 3]);
  });

  test("LeavesATaskThePeerMayNotHaveToTheDatabase", () => {
    const tail = createOutboxTail({ currentCluster: "clusterA" });
    tail.committed([task(1), task(2, { clusters: ["clusterA", "clusterC"] })]);
    expect(tail.page(1, 0, 10, "clusterB")).toBeUndefined();
    expect(ids(tail.page(1, 0, 10, "clusterC"))).toBeUndefined();
    expect(ids(tail.page(1, 1, 10, "clusterC"))).toEqual([2]);
  });

  test("LetsATaskGoOnceEveryOtherClusterOfItsNamespaceAskedPastIt", () => {
    const tail = createOutboxTail({ currentCluster: "clusterA" });
    tail.committed([task(1, { clusters: ["clusterA", "clusterB", "clusterC"] }), task(2), task(3)]);
    tail.passed(1, "clusterB", 2);
    // Task 1 is clusterC's too: it holds the shard's front until C asks past it.
    expect(tail.size().tasks).toBe(3);
    expect(ids(tail.page(1, 0, 10, "clusterC"))).toBeUndefined(); // task 2 is not C's: the database decides
    tail.passed(1, "clusterC", 1);
    expect(tail.size().tasks).toBe(1);
    expect(ids(tail.page(1, 2, 10, "clusterB"))).toEqual([3]);
    // Asking from further back (a restart) keeps nothing back that is gone, and drops nothing more.
    tail.passed(1, "clusterB", 0);
    expect(tail.size().tasks).toBe(1);
    tail.passed(2, "clusterB", 9);
    expect(tail.size().tasks).toBe(1);
    tail.passed(1, "clusterB", 3);
    expect(tail.size()).toEqual({ tasks: 0, bytes: 0 });
  });

  test("DropsTasksPastItsAgeAndByteBudgets", () => {
    let now = 0;
    const tail = createOutboxTail({ currentCluster: "clusterA", maxAgeMs: 1000, maxBytes: 10_000, now: () => now });
    tail.committed([task(1)]);
    now = 600;
    tail.committed([task(2)]);
    now = 1100;
    expect(ids(tail.page(1, 0, 10, "clusterB"))).toBeUndefined();
    expect(ids(tail.page(1, 1, 10, "clusterB"))).toEqual([2]);
    const big = (id: number) => task(id, { events: [{ attributes: { case: "markerRecordedEventAttributes", value: { details: { payloads: [{ data: new Uint8Array(6000) }] } } as never } }] });
    tail.committed([big(3), big(4)]);
    expect(tail.size().bytes).toBeLessThanOrEqual(10_000);
    expect(ids(tail.page(1, 3, 10, "clusterB"))).toEqual([4]);
    expect(tail.page(1, 2, 10, "clusterB")).toBeUndefined();
  });
});

for (const store of await testStores()) {
  describe(`outbox tail on ${store}: a caught-up peer's page comes from memory, equal to the database's`, () => {
    let a: TestCluster, b: TestCluster;
    const sent = (source: string) =>
      Number(a.server.metrics.render().match(new RegExp(`replication_pages_sent\\{[^}]*source="${source}"[^}]*\\} (\\d+)`))?.[1] ?? 0);

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{ shards: 1 }, { shards: 1 }]);
      // One way only: clusterB does not pull, the test pulls in its name.
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      await a.client(WorkflowService).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("EveryKindOfWriteIsSentFromMemoryAsTheDatabaseWouldSendIt", async () => {
      const admin = a.client(AdminService);
      const pull = (after: bigint, waitTimeoutMs = 0) =>
        admin.getReplicationTasks({ shardId: 1, afterTaskId: after, pageSize: 100, includeEvents: true, clusterName: "clusterB", waitTimeoutMs });
      const wf = a.client(WorkflowService);
      const run = (workflowId: string) => ({ workflowId, runId: "" });
      await wf.startWorkflowExecution({ namespace: "orders", workflowId: "o-0", workflowType: "Order", taskQueue: "q" });
      const start = (await pull(0n)).maxTaskId;
      // A caught-up long poll, woken by the first commit.
      const woken = pull(start, 15_000);
      await wf.startWorkflowExecution({ namespace: "orders", workflowId: "o-1", workflowType: "Order", taskQueue: "q", input: json({ total: 12.5, items: ["a", "b"] }), workflowExecutionTimeout: { seconds: 3600n } });
      expect((await woken).tasks.map((t) => t.workflowId)).toEqual(["o-1"]);
      await wf.signalWorkflowExecution({ namespace: "orders", workflowExecution: run("o-1"), signalName: "pay", input: json(1), identity: "me", requestId: "pay-1" });
      await wf.signalWithStartWorkflowExecution({ namespace: "orders", workflowId: "o-2", workflowType: "Order", taskQueue: "q", signalName: "go", signalInput: json("x") });
      await wf.recordMarker({ namespace: "orders", workflowExecution: run("o-2"), markerName: "m", details: json({ n: null }) });
      await wf.requestCancelWorkflowExecution({ namespace: "orders", workflowExecution: run("o-2"), reason: "changed mind", requestId: "c-2" });
      await wf.terminateWorkflowExecution({ namespace: "orders", workflowExecution: run("o-1"), reason: "done" });
      await wf.completeWorkflowExecution({ namespace: "orders", workflowExecution: run("o-2"), result: json([1, 2]) });

      // From the start: o-0's task is gone from the tail (the poll asked past it), so this page is
      // read from the database, which also finds the peer enabled afresh.
      const end = (await pull(0n)).maxTaskId;
      const before = sent("memory");
      const fromMemory = await pull(start);
      expect(sent("memory")).toBe(before + 1);
      expect(fromMemory.lastTaskId).toBe(end);

      // The same page from a sender with no tail, on the same database.
      const reader = createReplicationSender({ db: a.server.database.db, cluster: a.server.cluster, notifier: createEventNotifier() });
      const fromDatabase = await reader.getReplicationTasks({ shardId: 1, afterTaskId: start, pageSize: 100, includeEvents: true, clusterName: "clusterB", waitTimeoutMs: 0 } as never);
      await reader.stop();
      expect(fromDatabase.tasks.length).toBe(7);
      expect(tasksJson(fromMemory)).toEqual(tasksJson(fromDatabase));
      expect(fromMemory.maxTaskId).toBe(fromDatabase.maxTaskId);
    });

    test("ADisabledPeerIsRefusedAtOnceThoughItsTasksAreHeld", async () => {
      const admin = a.client(AdminService);
      const { maxTaskId } = await admin.getReplicationTasks({ shardId: 1, afterTaskId: 0n, clusterName: "clusterB", includeEvents: true });
      await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "o-3", workflowType: "Order", taskQueue: "q" });
      const op = a.client(OperatorService);
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: false });
      try {
        const pulled = admin.getReplicationTasks({ shardId: 1, afterTaskId: maxTaskId, clusterName: "clusterB", includeEvents: true });
        await expect(pulled).rejects.toThrow("replication with cluster clusterB is disabled on clusterA");
        await pulled.catch(() => {});
      } finally {
        await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: true });
      }
    });
  });
}

function tasksJson(res: GetReplicationTasksResponse) {
  return res.tasks.map((t) => toJson(ReplicationTaskSchema, t));
}
