import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { T } from "../backfill/support";
import { addr, eventuallyOn, startOrdersPair } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(120_000);

/** x's series of the gauge name for remote (its remote_cluster or source_cluster), read from /metrics. */
async function seriesOf(x: TestCluster, name: string, remote: string): Promise<number[]> {
  const text = await (await fetch(`${x.url}/metrics`)).text();
  return [...text.matchAll(new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`, "gm"))].filter((m) => m[1]!.includes(`_cluster="${remote}"`)).map((m) => Number(m[2]));
}

for (const store of await testStores()) {
  describe(`a remote's gauges on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    beforeAll(async () => {
      [a, b] = await startOrdersPair(store);
    });
    afterAll(async () => {
      await Promise.all([a.destroy(), b.destroy()]);
    });

    test("TestRemoteGaugesFollowTheConnection: a disabled remote's inbound lag is not shown (unknown), nor anything of a removed one", async () => {
      // B active for a namespace of its own: A pulls B's shards, and shows their lag.
      await a.client(WorkflowService).registerNamespace({ namespace: "b-side", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"], activeClusterName: "clusterB" });
      await eventuallyOn(b, "b-side", () => {});
      await b.client(WorkflowService).startWorkflowExecution({ namespace: "b-side", workflowId: "w", ...T });
      await eventually(async () => {
        expect(await seriesOf(a, "replication_tasks_lag", "clusterB")).toEqual([0]);
        expect(await seriesOf(a, "namespace_replication_task_ack_level", "clusterB")).toHaveLength(1);
      });
      // The DLQ's size shows for each remote, entries or none.
      expect(await seriesOf(a, "replication_dlq_size", "clusterB")).toEqual([0]);
      const op = a.client(OperatorService);
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: false });
      // Paused: how far behind A is cannot be known from here (replication status says unknown).
      await eventually(async () => {
        expect(await seriesOf(a, "replication_tasks_lag", "clusterB")).toEqual([]);
        expect(await seriesOf(a, "replication_stream_received_tasks", "clusterB")).toEqual([]);
      });
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: true });
      await b.client(WorkflowService).signalWorkflowExecution({ namespace: "b-side", workflowExecution: { workflowId: "w" }, signalName: "s" });
      await eventually(async () => expect(await seriesOf(a, "replication_tasks_lag", "clusterB")).toEqual([0]));

      // Removed: none of B's series stay at their last values.
      await a.client(WorkflowService).updateNamespace({ namespace: "orders", clusters: ["clusterA"] });
      await a.client(WorkflowService).updateNamespace({ namespace: "b-side", activeClusterName: "clusterA" });
      await a.client(WorkflowService).updateNamespace({ namespace: "b-side", clusters: ["clusterA"] });
      await op.removeRemoteCluster({ clusterName: "clusterB" });
      await eventually(async () => {
        for (const name of ["replication_tasks_lag", "replication_stream_received_tasks", "namespace_replication_task_ack_level", "replication_dlq_size"]) {
          expect([name, await seriesOf(a, name, "clusterB")]).toEqual([name, []]);
        }
      });
    });
  });
}
