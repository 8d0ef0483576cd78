import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { EventType, WorkflowExecutionStatus, WorkflowIdReusePolicy } from "../../src/gen/tern/common/v1/common_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { connectAll, expectActiveOn, startClusters } from "../failover/mesh";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "order", taskQueue: "q" };

/** A run's history as comparable rows: id, version, type, attributes. */
async function historyOf(x: TestCluster, namespace: string, workflowId: string, runId = "") {
  const res = await x.client(WorkflowService).getWorkflowExecutionHistory({ namespace, execution: { workflowId, runId }, maximumPageSize: 1000 });
  return res.history!.events.map((e) => ({ id: e.eventId, version: e.version, type: e.eventType, time: e.eventTime?.seconds, attributes: JSON.stringify(e.attributes, (_k, v) => (typeof v === "bigint" ? String(v) : v)) }));
}

/** Waits until every cluster holds the same history of the workflow as the first, and returns it. */
async function sameEverywhere(clusters: TestCluster[], namespace: string, workflowId: string, minEvents = 1) {
  return eventually(async () => {
    const first = await historyOf(clusters[0]!, namespace, workflowId);
    expect(first.length).toBeGreaterThanOrEqual(minEvents);
    for (const x of clusters.slice(1)) expect(await historyOf(x, namespace, workflowId)).toEqual(first);
    return first;
  }, { timeout: 20_000 });
}

for (const store of await testStores()) {
  describe(`three clusters on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    const wf = (x: TestCluster) => x.client(WorkflowService);
    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [{}, { shards: 8 }, {}]);
      await connectAll([a, b, c]);
      await wf(a).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"] });
      await expectActiveOn(c, "orders", "clusterA", 1n);
      await expectActiveOn(b, "orders", "clusterA", 1n);
    });
    afterAll(() => Promise.all([a, b, c].map((x) => x.destroy())));

    test("TestStartAndSignalsOnAReplicateToBAndC", async () => {
      for (let i = 0; i < 6; i++) {
        await wf(a).startWorkflowExecution({ namespace: "orders", workflowId: `o-${i}`, ...T });
        for (let s = 0; s < 3; s++) await wf(a).signalWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: `o-${i}` }, signalName: `s${s}` });
      }
      await wf(a).completeWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: "o-0" } });
      for (let i = 0; i < 6; i++) {
        const h = await sameEverywhere([a, b, c], "orders", `o-${i}`, i === 0 ? 5 : 4);
        expect(h.every((e) => e.version === 1n)).toBe(true);
      }
      const onC = await wf(c).listWorkflowExecutions({ namespace: "orders", status: WorkflowExecutionStatus.COMPLETED });
      expect(onC.executions.map((e) => e.execution!.workflowId)).toEqual(["o-0"]);
      const metrics = await (await fetch(`${b.url}/metrics`)).text();
      expect(metrics).toMatch(/namespace_replication_task_ack_level\{remote_cluster="clusterA"\} [1-9]/);
      expect(metrics).toMatch(/replication_tasks_applied\{[^}]*remote_cluster="clusterA"[^}]*\} [1-9]/);
      expect(metrics).toContain("replication_latency_bucket");
    });

    test("TestForcedFailoverToBThenWritesReplicateAtVersion2AndBackGives101", async () => {
      await wf(a).startWorkflowExecution({ namespace: "orders", workflowId: "forced", ...T });
      await sameEverywhere([a, b, c], "orders", "forced");
      await wf(b).updateNamespace({ namespace: "orders", activeClusterName: "clusterB" });
      for (const x of [a, b, c]) await expectActiveOn(x, "orders", "clusterB", 2n);
      await wf(b).signalWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: "forced" }, signalName: "on-b" });
      const h = await sameEverywhere([b, a, c], "orders", "forced", 2);
      expect(h.map((e) => e.version)).toEqual([1n, 2n]);
      await wf(a).updateNamespace({ namespace: "orders", activeClusterName: "clusterA" });
      for (const x of [a, b, c]) await expectActiveOn(x, "orders", "clusterA", 101n);
      await wf(a).signalWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: "forced" }, signalName: "on-a" });
      expect((await sameEverywhere([a, b, c], "orders", "forced", 3)).map((e) => e.version)).toEqual([1n, 2n, 101n]);
    });

    test("TestGracefulFailoverUnderSignalLoadLosesNoAcknowledgedSignal", async () => {
      const ids = ["load-0", "load-1", "load-2", "load-3"];
      for (const id of ids) await wf(a).startWorkflowExecution({ namespace: "orders", workflowId: id, ...T });
      const acked: string[] = [];
      let stop = false;
      const senders = ids.map(async (id) => {
        for (let n = 0; !stop; n++) {
          const name = `${id}#${n}`;
          // Writes go to whichever cluster is active now; during HANDOVER they wait or get UNAVAILABLE.
          for (const x of [a, b]) {
            try {
              await wf(x).signalWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: id }, signalName: name, requestId: name });
              acked.push(name);
              break;
            } catch (e) {
              const code = (e as ConnectError).code;
              if (code !== Code.FailedPrecondition && code !== Code.Unavailable) throw e;
            }
          }
        }
      });
      await eventually(() => expect(acked.length).toBeGreaterThan(20), { timeout: 20_000 });
      const res = await a.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: "clusterB", timeout: durationFromMs(15_000) });
      expect(res.namespace!.replicationConfig!.activeClusterName).toBe("clusterB");
      const ackedAtSwitch = acked.length;
      await eventually(() => expect(acked.length).toBeGreaterThan(ackedAtSwitch + 10), { timeout: 20_000 }); // B takes writes now
      stop = true;
      await Promise.all(senders);
      const seen = new Map<string, number>();
      for (const id of ids) {
        const h = await sameEverywhere([b, a, c], "orders", id);
        for (const e of h) if (e.type === EventType.WORKFLOW_EXECUTION_SIGNALED) {
          const name = JSON.parse(e.attributes).value.signalName as string;
          seen.set(name, (seen.get(name) ?? 0) + 1);
        }
      }
      for (const name of acked) expect(seen.get(name)).toBe(1);
      for (const x of [a, b, c]) {
        const ns = (await wf(x).describeNamespace({ namespace: "orders" })).namespace!;
        expect(ns.replicationConfig!.state).toBe(1); // NORMAL
      }
      await a.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: "clusterA" }); // back for the next tests
      await expectActiveOn(c, "orders", "clusterA", 201n);
    });

    test("TestTimerSetOnAFiresOnBAfterFailover", async () => {
      await wf(a).startWorkflowExecution({ namespace: "orders", workflowId: "timer", ...T, workflowExecutionTimeout: durationFromMs(3000) });
      await sameEverywhere([a, b], "orders", "timer");
      await wf(b).updateNamespace({ namespace: "orders", activeClusterName: "clusterB" });
      await expectActiveOn(b, "orders", "clusterB", 202n);
      const h = await eventually(async () => {
        const events = await historyOf(b, "orders", "timer");
        expect(events.at(-1)!.type).toBe(EventType.WORKFLOW_EXECUTION_TIMED_OUT);
        return events;
      }, { timeout: 15_000 });
      expect(h.at(-1)!.version).toBe(202n); // fired by B, the new active
      await sameEverywhere([b, a, c], "orders", "timer", 2);
    });

    test("TestWorkflowIdReusePolicyHoldsAcrossFailover", async () => {
      // Active is B now (previous test). A run started and completed on B...
      await wf(b).startWorkflowExecution({ namespace: "orders", workflowId: "reuse", ...T, requestId: "reuse-start" });
      await wf(b).completeWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: "reuse" } });
      await sameEverywhere([b, a], "orders", "reuse", 2);
      await wf(a).updateNamespace({ namespace: "orders", activeClusterName: "clusterA" });
      await expectActiveOn(a, "orders", "clusterA", 301n);
      // ...is known to A: reject-duplicate refuses, allow-duplicate-failed-only refuses after success,
      await rejects(
        wf(a).startWorkflowExecution({ namespace: "orders", workflowId: "reuse", ...T, workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE }),
        Code.AlreadyExists, "reject-duplicate",
      );
      await rejects(
        wf(a).startWorkflowExecution({ namespace: "orders", workflowId: "reuse", ...T, workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY }),
        Code.AlreadyExists, "previous run ended COMPLETED",
      );
      // and the first start's requestId, retried after the failover, still answers with the first run.
      const first = (await historyOf(a, "orders", "reuse"))[0]!;
      expect(first.type).toBe(EventType.WORKFLOW_EXECUTION_STARTED);
      const retry = await wf(a).startWorkflowExecution({ namespace: "orders", workflowId: "reuse", ...T, requestId: "reuse-start" });
      expect(retry.started).toBe(false);
    });
  });
}
