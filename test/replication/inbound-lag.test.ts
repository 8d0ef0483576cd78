import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { eq } from "drizzle-orm";
import { createReplicationCleanup } from "../../replication/cleanup";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { namespaces, replicationTasks } from "../../src/persistence/schema";
import { parseCounter } from "../../bench/lib/prom-histogram";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";
import { faultyApplier, mergeGate, type MergeGate } from "./dlq-faults";
import { addr } from "./support";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";

/**
 * The receiver's replication_tasks_lag and replication status's inbound rows were the source's
 * last task id less this cluster's ack: a cluster connected to a source whose queue was cleaned
 * before it was added read behind by every task the shard ever had until its first page applied
 * (the ack then jumping past the deleted ids), for as long as that page took to apply.
 */
for (const store of await testStores()) {
  describe(`the inbound lag of a cluster added after its source's queue was cleaned, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    const gates = new Map<string, MergeGate>();
    const held: MergeGate[] = [];
    beforeAll(async () => {
      [a, b] = await startClusters(store, [
        { shards: 1 },
        { shards: 1, serverOptions: { replication: { wrapApplier: faultyApplier(new Set(), new Map(), new Map(), gates) } } },
      ]);
    });
    afterAll(() => {
      // A test that failed while a gate held its apply: destroy waits for that apply.
      for (const gate of held) gate.release();
      return Promise.all([a.destroy(), b.destroy()]);
    });

    test("TestTheInboundLagOfAFirstPageHeldFromApplyingIsTheTasksTheSourceHolds", async () => {
      const db = a.server.database.db;
      const wf = a.client(WorkflowService);
      // Global, on clusterA alone: its runs' tasks are written all the same.
      await wf.registerNamespace({ namespace: NS, isGlobalNamespace: true });
      const start = (workflowId: string) => wf.startWorkflowExecution({ namespace: NS, workflowId, workflowType: "T", taskQueue: "q" });
      for (const id of ["gone-1", "gone-2", "gone-3", "gone-4", "gone-5"]) await start(id);
      expect(await db.$count(replicationTasks)).toBe(5);
      // No remote yet: past the grace, a cleanup deletes them (a remote added later repairs through raw history).
      await createReplicationCleanup({ db, log: a.server.log, graceMs: 0, now: () => new Date(Date.now() + 1000) }).runOnce();
      expect(await db.$count(replicationTasks)).toBe(0);
      // clusterA knows clusterB and lists it; clusterB does not pull until it knows clusterA.
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      await wf.updateNamespace({ namespace: NS, clusters: [a.name, b.name] });
      const [row] = await db.select().from(namespaces).where(eq(namespaces.name, NS));
      await b.server.database.db.insert(namespaces).values(row!).onConflictDoNothing();
      for (const id of ["held", "kept"]) await start(id);
      const pending = await db.$count(replicationTasks);
      expect(pending).toBe(2);

      const gate = mergeGate();
      gates.set("held", gate);
      held.push(gate);
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
      await gate.held;

      const gauge = async () => {
        const text = await (await fetch(`${b.url}/metrics`)).text();
        expect(text).toMatch(/^replication_tasks_lag\{[^}]*remote_cluster="clusterA"/m);
        return parseCounter(text, "replication_tasks_lag", { remote_cluster: a.name, shard: "1" });
      };
      const inbound = async () => (await b.client(AdminService).getReplicationStatus({})).remotes.find((r) => r.clusterName === a.name)!.inbound;
      // The page's two tasks wait; the source's own count says as much. Before: 7 (the last task id), and the gauge unset (0) until the page applied.
      await eventually(async () => {
        const [row] = await inbound();
        expect({ status: [row!.maxTaskId, row!.ackedTaskId, row!.lagTasks], gauge: await gauge() }).toEqual({ status: [7n, 0n, BigInt(pending)], gauge: pending });
      });
      const outbound = (await a.client(AdminService).getReplicationStatus({})).remotes.find((r) => r.clusterName === b.name)!.outbound;
      expect(outbound.map((s) => s.lagTasks)).toEqual([BigInt(pending)]);

      gate.release();
      await eventually(async () => {
        expect((await inbound()).map((s) => [s.ackedTaskId, s.lagTasks])).toEqual([[7n, 0n]]);
        expect(await gauge()).toBe(0);
      });
    });
  });
}
