import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import type { HistoryApplier } from "../../replication/applier";
import { T } from "../backfill/support";
import { createGate } from "../support/gate";
import { addr, eventuallyOn, startOrdersPair } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { startLinkedPair } from "../support/linked-pair";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** x's series of the gauge name for remote (its remote_cluster or source_cluster), read from /metrics. */
async function seriesOf(x: TestCluster, name: string, remote: string): Promise<number[]> {
  const text = await (await fetch(`${x.url}/metrics`)).text();
  return [...text.matchAll(new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`, "gm"))].filter((m) => m[1]!.includes(`_cluster="${remote}"`)).map((m) => Number(m[2]));
}

/** The states x's replication_connection_state shows at 1 for remote (one, as replication status shows it, while x knows remote). */
async function connectionStateOf(x: TestCluster, remote: string): Promise<string[]> {
  const text = await (await fetch(`${x.url}/metrics`)).text();
  return [...text.matchAll(/^replication_connection_state\{remote_cluster="([^"]*)",state="([^"]*)"\} 1$/gm)].filter((m) => m[1] === remote).map((m) => m[2]!);
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

    test("TestRemoteGaugesFollowTheConnection: a connected remote's inbound lag shows for each of its shards, those it never had a task in too; a disabled one's is not shown (unknown), nor anything of a removed one", async () => {
      // B active for a namespace of its own: A pulls B's shards, and shows their lag.
      await a.client(WorkflowService).registerNamespace({ namespace: "b-side", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"], activeClusterName: "clusterB" });
      await eventuallyOn(b, "b-side", () => {});
      await b.client(WorkflowService).startWorkflowExecution({ namespace: "b-side", workflowId: "w", ...T });
      await eventually(async () => {
        expect(await seriesOf(a, "replication_tasks_lag", "clusterB")).toEqual([0, 0, 0, 0]);
        expect(await seriesOf(a, "namespace_replication_task_ack_level", "clusterB")).toHaveLength(1);
      });
      // The DLQ's size shows for each remote, entries or none.
      expect(await seriesOf(a, "replication_dlq_size", "clusterB")).toEqual([0]);
      await eventually(async () => expect(await connectionStateOf(a, "clusterB")).toEqual(["connected"]));
      const op = a.client(OperatorService);
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: false });
      // Paused, B's last answer a moment old: status claims no lag at once, not 0 for 12 s until that answer is overdue.
      const paused = (await a.client(AdminService).getReplicationStatus({})).remotes.find((r) => r.clusterName === "clusterB")!;
      expect([paused.inboundLagUnknown, paused.namespaceLagUnknown, paused.inboundError, paused.namespaceError]).toEqual([
        true, true, "clusterA's connection to clusterB is disabled", "clusterA's connection to clusterB is disabled",
      ]);
      // Paused: how far behind A is cannot be known from here (replication status says unknown).
      await eventually(async () => {
        expect(await seriesOf(a, "replication_tasks_lag", "clusterB")).toEqual([]);
        expect(await seriesOf(a, "replication_stream_received_tasks", "clusterB")).toEqual([]);
        expect(await seriesOf(a, "replication_lag_seconds", "clusterB")).toEqual([]);
        expect(await connectionStateOf(a, "clusterB")).toEqual(["disabled"]);
      });
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: true });
      await b.client(WorkflowService).signalWorkflowExecution({ namespace: "b-side", workflowExecution: { workflowId: "w" }, signalName: "s" });
      await eventually(async () => {
        expect(await seriesOf(a, "replication_tasks_lag", "clusterB")).toEqual([0, 0, 0, 0]);
        expect(await seriesOf(a, "replication_lag_seconds", "clusterB")).toEqual([0]);
      });

      // Removed: none of B's series stay at their last values.
      await a.client(WorkflowService).updateNamespace({ namespace: "orders", clusters: ["clusterA"] });
      await a.client(WorkflowService).updateNamespace({ namespace: "b-side", activeClusterName: "clusterA" });
      await a.client(WorkflowService).updateNamespace({ namespace: "b-side", clusters: ["clusterA"] });
      await op.removeRemoteCluster({ clusterName: "clusterB" });
      await eventually(async () => {
        for (const name of ["replication_tasks_lag", "replication_lag_seconds", "replication_stream_received_tasks", "namespace_replication_task_ack_level", "replication_dlq_size"]) {
          expect([name, await seriesOf(a, name, "clusterB")]).toEqual([name, []]);
        }
        expect(await connectionStateOf(a, "clusterB")).toEqual([]);
      });
    });
  });

  describe(`a source that stops while its connection stays enabled, on ${store}`, () => {
    // B hears from A at least every 300 ms: A's inbound lag is unknown on B 2.3 s after it last did.
    let pair: Awaited<ReturnType<typeof startLinkedPair>>;
    let restarted: TestCluster | undefined;
    beforeAll(async () => {
      pair = await startLinkedPair(store, [{}, { serverOptions: { replication: { waitMs: 300 } } }]);
    });
    afterAll(async () => {
      await restarted?.stop();
      await pair.close();
    });

    test("TestInboundLagOfAStoppedSourceIsNotShownWhileStatusSaysUnknown, and shown again once it is back", async () => {
      const { a, b, link } = pair;
      const unknown = async () => (await b.client(AdminService).getReplicationStatus({})).remotes[0]!.inboundLagUnknown;
      await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w", ...T });
      await eventually(async () => {
        expect(await unknown()).toBe(false);
        expect(await seriesOf(b, "replication_tasks_lag", "clusterA")).toEqual([0, 0, 0, 0]);
      });

      await a.stop();
      // Still enabled, the stream failing: status says B cannot know its lag, and the gauge claims none either.
      await eventually(async () => expect(await unknown()).toBe(true), { timeout: 10_000 });
      expect(await seriesOf(b, "replication_tasks_lag", "clusterA")).toEqual([]);
      expect(await seriesOf(b, "replication_lag_seconds", "clusterA")).toEqual([]);
      // Said in /metrics too, not only by a gauge gone missing (which an idle remote's lag may also be).
      await eventually(async () => {
        const connection = (await b.client(AdminService).getReplicationStatus({})).remotes[0]!.connectionState;
        expect([connection.startsWith("error: "), await connectionStateOf(b, "clusterA")]).toEqual([true, ["error"]]);
      });

      restarted = await startTestCluster({ store, name: "clusterA", initialFailoverVersion: 1, dataLocation: a.dataLocation });
      const [host, port] = addr(restarted).split(":");
      link.retarget({ host: host!, port: Number(port) });
      await restarted.client(WorkflowService).signalWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: "w" }, signalName: "s" });
      await eventually(async () => {
        expect(await unknown()).toBe(false);
        expect(await seriesOf(b, "replication_tasks_lag", "clusterA")).toEqual([0, 0, 0, 0]);
        expect(await connectionStateOf(b, "clusterA")).toEqual(["connected"]);
      }, { timeout: 10_000 });
    });
  });

  describe(`a remote's lag in seconds, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    // B's applies of "held" wait (before their transaction) while the gate is closed: A's task of it waits on B, and ages.
    const gate = createGate();
    const holding = (applier: HistoryApplier): HistoryApplier => ({
      ...applier,
      async namespacesOf(tasks) {
        if (tasks.some((t) => (t as { workflowId?: string }).workflowId === "held")) await gate.held;
        return applier.namespacesOf(tasks);
      },
    });
    beforeAll(async () => {
      [a, b] = await startOrdersPair(store, [{}, { serverOptions: { replication: { wrapApplier: holding } } }]);
    });
    afterAll(async () => {
      gate.open();
      await Promise.all([a.destroy(), b.destroy()]);
    });

    test("TestReplicationLagSecondsIsTheAgeOfTheOldestTaskWaitingAsStatusShowsIt: it grows while the task waits, and is 0 once applied", async () => {
      await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w", ...T });
      await eventually(async () => expect(await seriesOf(b, "replication_lag_seconds", "clusterA")).toEqual([0]));

      gate.close();
      await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "held", ...T });
      let first = 0;
      await eventually(async () => {
        first = (await seriesOf(b, "replication_lag_seconds", "clusterA"))[0] ?? 0;
        expect(first).toBeGreaterThan(0);
      });
      // Read at each scrape: it ages with nothing else changing, and says what status says (LAG (MS)).
      await eventually(async () => {
        const statusMs = (await b.client(AdminService).getReplicationStatus({})).remotes[0]!.inbound.reduce((most, s) => Math.max(most, Number(s.lagMs)), 0);
        const [seconds] = await seriesOf(b, "replication_lag_seconds", "clusterA");
        expect(seconds!).toBeGreaterThan(first + 0.5);
        expect(Math.abs(seconds! * 1000 - statusMs)).toBeLessThan(500);
      });

      gate.open();
      await eventually(async () => expect(await seriesOf(b, "replication_lag_seconds", "clusterA")).toEqual([0]));
    });
  });
}
