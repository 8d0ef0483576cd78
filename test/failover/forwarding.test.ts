import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { eq } from "drizzle-orm";
import { ACTIVE_CLUSTER_HEADER } from "../../src/errors";
import { WorkflowIdReusePolicy } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowExecutionAlreadyStartedFailureSchema } from "../../src/gen/tern/errordetails/v1/message_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { namespaces } from "../../src/persistence/schema";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { expectTerminatedFor } from "../support/terminated-for";
import { addr, connectAll, eventuallyOn, startClustersInTurn } from "./mesh";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const policy = (p: string) => ({ extraYaml: `dcRedirectionPolicy: { policy: ${p} }` });
const run = (workflowId: string) => ({ workflowId, runId: "" });

for (const store of await testStores()) {
  describe(`forwarding to the active cluster on ${store}`, () => {
    let a: TestCluster, noop: TestCluster, selected: TestCluster, all: TestCluster;
    const started = startClustersInTurn(store, [{}, {}, policy("selected-apis-forwarding"), policy("all-apis-forwarding")]);
    beforeAll(async () => {
      [a, noop, selected, all] = started as [TestCluster, TestCluster, TestCluster, TestCluster];
      await connectAll(started);
      await a.client(WorkflowService).registerNamespace({
        namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC", "clusterD"],
      });
      for (const x of [noop, selected, all]) await eventuallyOn(x, "orders", () => {});
      await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w1", workflowType: "t", taskQueue: "q" });
    });
    afterAll(() => Promise.all(started.map((x) => x.destroy())));

    test("TestSignalOnPassiveRefusedUnderNoop, naming the active cluster's frontend address", async () => {
      const err = await rejects(
        noop.client(WorkflowService).signalWorkflowExecution({ namespace: "orders", workflowExecution: run("w1"), signalName: "s" }),
        Code.FailedPrecondition,
        "namespace orders is active in cluster clusterA",
      );
      // The address B knows A at (its cluster metadata): where the client can send the write.
      expect(err.rawMessage).toBe(`namespace orders is active in cluster clusterA, whose frontend is at ${addr(a)}`);
    });

    test("TestSignalOnPassiveRefusedUnderNoopWhenTheActiveClusterIsUnknownHere: names it without an address", async () => {
      // B's namespace row names an active cluster B has no cluster metadata for (no rpc address).
      const db = noop.server.database.db;
      await db.update(namespaces).set({ activeClusterName: "clusterE" }).where(eq(namespaces.name, "orders"));
      try {
        await noop.client(WorkflowService).describeNamespace({ namespace: "orders" }); // caches "active in E"
        const err = await rejects(
          noop.client(WorkflowService).signalWorkflowExecution({ namespace: "orders", workflowExecution: run("w1"), signalName: "s" }),
          Code.FailedPrecondition,
          "namespace orders is active in cluster clusterE",
        );
        expect([err.rawMessage, err.metadata.get(ACTIVE_CLUSTER_HEADER)]).toEqual(["namespace orders is active in cluster clusterE", "clusterE"]);
      } finally {
        await db.update(namespaces).set({ activeClusterName: "clusterA" }).where(eq(namespaces.name, "orders"));
        await noop.client(WorkflowService).describeNamespace({ namespace: "orders" });
      }
    });

    test("TestSignalOnPassiveForwardedUnderSelectedApisAndRetryIsIdempotent", async () => {
      const wf = selected.client(WorkflowService);
      const first = await wf.signalWorkflowExecution({ namespace: "orders", workflowExecution: run("w1"), signalName: "s", requestId: "sig-1" });
      const again = await wf.signalWorkflowExecution({ namespace: "orders", workflowExecution: run("w1"), signalName: "s", requestId: "sig-1" });
      expect(again.eventId).toBe(first.eventId);
      const noId = await wf.signalWorkflowExecution({ namespace: "orders", workflowExecution: run("w1"), signalName: "s2" });
      expect(noId.eventId).toBe(first.eventId + 1n);
      const history = await a.client(WorkflowService).getWorkflowExecutionHistory({ namespace: "orders", execution: run("w1") });
      expect(history.history!.events.length).toBe(3); // started + two signals: the retry added nothing
    });

    test("TestStartOnPassiveForwardedUnderSelectedApis", async () => {
      const started = await selected.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w2", workflowType: "t", taskQueue: "q" });
      const onA = await a.client(WorkflowService).describeWorkflowExecution({ namespace: "orders", execution: run("w2") });
      expect(onA.workflowExecutionInfo!.execution!.runId).toBe(started.runId);
      // A forwarded refusal keeps its detail: the run a client ported from Temporal looks for.
      const again = await rejects(selected.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w2", workflowType: "t", taskQueue: "q" }),
        Code.AlreadyExists, `workflow execution w2 is already running (run ${started.runId})`);
      expect(again.findDetails(WorkflowExecutionAlreadyStartedFailureSchema).map((d) => d.runId)).toEqual([started.runId]);
    });

    test("TestTerminateIfRunningStartOnPassiveForwardedUnderSelectedApisAndRefusedUnderNoop", async () => {
      const tir = { namespace: "orders", workflowType: "t", taskQueue: "q", workflowIdReusePolicy: WorkflowIdReusePolicy.TERMINATE_IF_RUNNING };
      // Before: INVALID_ARGUMENT, "terminate-if-running is not served", wherever it was sent.
      await rejects(noop.client(WorkflowService).startWorkflowExecution({ ...tir, workflowId: "w-tir" }), Code.FailedPrecondition, "namespace orders is active in cluster clusterA");
      const wf = selected.client(WorkflowService);
      const first = await wf.startWorkflowExecution({ ...tir, workflowId: "w-tir" });
      const second = await wf.startWorkflowExecution({ ...tir, workflowId: "w-tir", requestId: "w-tir-2" });
      await expectTerminatedFor(a, "orders", "w-tir", first.runId, second.runId);
      // Its retry, forwarded again, answers its run and terminates nothing more.
      expect(await wf.startWorkflowExecution({ ...tir, workflowId: "w-tir", requestId: "w-tir-2" })).toMatchObject({ runId: second.runId, started: false });
      const third = await wf.signalWithStartWorkflowExecution({ ...tir, workflowId: "w-tir", signalName: "s" });
      await expectTerminatedFor(a, "orders", "w-tir", second.runId, third.runId);
      const onA = await a.client(WorkflowService).describeWorkflowExecution({ namespace: "orders", execution: run("w-tir") });
      expect([onA.workflowExecutionInfo!.execution!.runId, onA.workflowExecutionInfo!.historyLength]).toEqual([third.runId, 2n]);
    });

    test("TestForwardedErrorsKeepTheirCodes", async () => {
      await rejects(
        selected.client(WorkflowService).signalWorkflowExecution({ namespace: "orders", workflowExecution: run("missing"), signalName: "s" }),
        Code.NotFound,
        "workflow execution missing not found",
      );
    });

    test("TestCompleteNotForwardedUnderSelectedButForwardedUnderAllApis", async () => {
      const refused = await rejects(
        selected.client(WorkflowService).recordMarker({ namespace: "orders", workflowExecution: run("w1"), markerName: "m" }),
        Code.FailedPrecondition,
        `active in cluster clusterA, whose frontend is at ${addr(a)}`,
      );
      // Its caller set forwarding up: the refusal says why this call was not forwarded, and what to do.
      expect(refused.rawMessage).toEndWith("; clusterC forwards only start, signal, signal-with-start, cancel and terminate " +
        "(dcRedirectionPolicy selected-apis-forwarding), not RecordMarker: send it to clusterA, or set all-apis-forwarding here");
      const marker = await all.client(WorkflowService).recordMarker({ namespace: "orders", workflowExecution: run("w1"), markerName: "m" });
      expect(marker.eventId).toBe(4n);
      const described = await all.client(WorkflowService).describeWorkflowExecution({ namespace: "orders", execution: run("w1") });
      expect(described.nextEventId).toBe(5n);
      await all.client(WorkflowService).completeWorkflowExecution({ namespace: "orders", workflowExecution: run("w1") });
      const closed = await a.client(WorkflowService).describeWorkflowExecution({ namespace: "orders", execution: run("w1") });
      expect(closed.workflowExecutionInfo!.closeTime).toBeDefined();
    });

    test("TestWriteOnStaleActiveCacheIsForwardedToTheClusterNowActive", async () => {
      // clusterC's cache says C is active while its database already says A (a failover
      // that landed after the cached read): the write is refused by the namespace guard
      // inside its transaction, then forwarded to A instead of failing.
      const db = selected.server.database.db;
      await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w9", workflowType: "t", taskQueue: "q" });
      await eventually(() => selected.client(WorkflowService).describeWorkflowExecution({ namespace: "orders", execution: run("w9") }));
      await db.update(namespaces).set({ activeClusterName: "clusterC" }).where(eq(namespaces.name, "orders"));
      await selected.client(WorkflowService).describeNamespace({ namespace: "orders" }); // caches "active in C"
      await db.update(namespaces).set({ activeClusterName: "clusterA" }).where(eq(namespaces.name, "orders"));
      const res = await selected.client(WorkflowService).signalWorkflowExecution({
        namespace: "orders", workflowExecution: run("w9"), signalName: "after-stale-cache", requestId: "stale-1",
      });
      const onA = await a.client(WorkflowService).getWorkflowExecutionHistory({ namespace: "orders", execution: run("w9") });
      const last = onA.history!.events.at(-1)!;
      expect(last.eventId).toBe(res.eventId);
      expect(last.attributes.case === "workflowExecutionSignaledEventAttributes" && last.attributes.value.signalName).toBe("after-stale-cache");
    });

    test("TestAWriteForwardedToAClusterThatHandedOverHereIsUnavailable: each names the other while a failover reaches them in turn", async () => {
      // A says C is active (it handed over), C has not heard yet and forwards to A.
      const onA = a.server.database.db;
      await onA.update(namespaces).set({ activeClusterName: "clusterC" }).where(eq(namespaces.name, "orders"));
      try {
        await rejects(
          selected.client(WorkflowService).signalWorkflowExecution({ namespace: "orders", workflowExecution: run("w1"), signalName: "in-between" }),
          Code.Unavailable,
          "namespace orders is failing over: cluster clusterA says clusterC is active, and clusterC has not heard yet (request id ",
        );
      } finally {
        await onA.update(namespaces).set({ activeClusterName: "clusterA" }).where(eq(namespaces.name, "orders"));
      }
    });

    test("TestAWriteForwardedByAnOlderTernFromTheClusterNowActiveIsUnavailable: it passes the refusal on as it comes", async () => {
      // A tern from before 2026-12-05 forwards with the marker header and hands its caller the
      // target's answer unchanged; A, handed over to C, answers such a write from C itself.
      const onA = a.server.database.db;
      await onA.update(namespaces).set({ activeClusterName: "clusterC" }).where(eq(namespaces.name, "orders"));
      try {
        await a.client(WorkflowService).describeNamespace({ namespace: "orders" }); // caches "active in C"
        const write = { namespace: "orders", workflowExecution: run("w1"), signalName: "from-old-c", requestId: "old-c-1" };
        await rejects(
          a.client(WorkflowService).signalWorkflowExecution(write, { headers: { "x-tern-forwarded-from": "clusterC" } }),
          Code.Unavailable,
          "namespace orders is failing over: cluster clusterA says clusterC is active, and clusterC has not heard yet (request id old-c-1); retry with the same request id",
        );
        // Forwarded from another cluster, it is the refusal naming C, as before.
        await rejects(
          a.client(WorkflowService).signalWorkflowExecution(write, { headers: { "x-tern-forwarded-from": "clusterD" } }),
          Code.FailedPrecondition,
          "namespace orders is active in cluster clusterC",
        );
      } finally {
        await onA.update(namespaces).set({ activeClusterName: "clusterA" }).where(eq(namespaces.name, "orders"));
        await a.client(WorkflowService).describeNamespace({ namespace: "orders" });
      }
    });

    test("TestAWriteForwardedToAClusterThatHandedOverToAThirdIsForwardedThere: three clusters, one still names the old active", async () => {
      // clusterC still names B active (it has not heard that B handed over to A): B refuses the
      // forwarded write naming A, and C follows to A rather than failing a write a retry would land.
      const onC = selected.server.database.db;
      // The test before left A's cache naming C for a moment.
      await eventually(() => a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w3", workflowType: "t", taskQueue: "q", requestId: "start-w3" }));
      await eventually(() => noop.client(WorkflowService).describeWorkflowExecution({ namespace: "orders", execution: run("w3") }));
      await onC.update(namespaces).set({ activeClusterName: "clusterB" }).where(eq(namespaces.name, "orders"));
      try {
        await eventuallyOn(selected, "orders", (ns) => expect(ns.replicationConfig!.activeClusterName).toBe("clusterB"));
        const res = await selected.client(WorkflowService).signalWorkflowExecution({
          namespace: "orders", workflowExecution: run("w3"), signalName: "via-b", requestId: "third-1",
        });
        const onA = await a.client(WorkflowService).getWorkflowExecutionHistory({ namespace: "orders", execution: run("w3") });
        expect(onA.history!.events.at(-1)!.eventId).toBe(res.eventId);
        // A graceful failover asked of C goes the same way: B names A, and A answers.
        await rejects(
          selected.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: "clusterA" }),
          Code.FailedPrecondition,
          "namespace orders is already active in cluster clusterA",
        );
      } finally {
        await onC.update(namespaces).set({ activeClusterName: "clusterA" }).where(eq(namespaces.name, "orders"));
        await eventuallyOn(selected, "orders", (ns) => expect(ns.replicationConfig!.activeClusterName).toBe("clusterA"));
      }
    });

    test("TestAWriteOnAPassiveClusterWhoseConnectionToTheActiveIsDisabledIsRefusedNotForwarded", async () => {
      await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w-disabled", workflowType: "t", taskQueue: "q" });
      const setConnection = (enabled: boolean) => selected.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: enabled });
      await setConnection(false);
      try {
        // Before, C forwarded over the connection its operator had disabled, and A took the signal.
        const refusal = `namespace orders is active in cluster clusterA, whose frontend is at ${addr(a)}; clusterC's connection to clusterA is disabled (enable_connection is false), ` +
          "so it does not forward the call there: send it to clusterA, or enable the connection (admin cluster upsert-remote-cluster --enable-connection=true)";
        const err = await rejects(
          selected.client(WorkflowService).signalWorkflowExecution({ namespace: "orders", workflowExecution: run("w-disabled"), signalName: "s", requestId: "disabled-1" }),
          Code.FailedPrecondition,
          refusal,
        );
        expect([err.rawMessage, err.metadata.get(ACTIVE_CLUSTER_HEADER)]).toEqual([refusal, "clusterA"]);
        await rejects(selected.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: "clusterC" }), Code.FailedPrecondition, refusal);
        const onA = await a.client(WorkflowService).describeWorkflowExecution({ namespace: "orders", execution: run("w-disabled") });
        expect(onA.workflowExecutionInfo!.historyLength).toBe(1n);
      } finally {
        await setConnection(true);
      }
      // Enabled again, the write is forwarded.
      await selected.client(WorkflowService).signalWorkflowExecution({ namespace: "orders", workflowExecution: run("w-disabled"), signalName: "s", requestId: "disabled-1" });
      const onA = await a.client(WorkflowService).describeWorkflowExecution({ namespace: "orders", execution: run("w-disabled") });
      expect(onA.workflowExecutionInfo!.historyLength).toBe(2n);
    });

    test("TestForwardingToAnActiveClusterThatIsDownIsUnavailable (last: it stops A)", async () => {
      await a.stop();
      await rejects(
        selected.client(WorkflowService).signalWorkflowExecution({ namespace: "orders", workflowExecution: run("w1"), signalName: "s" }),
        Code.Unavailable,
        "cannot reach cluster clusterA",
      );
      // Was: "cannot reach cluster clusterA: connection refused (request id ...); retry", which a
      // retry never mends while A is down: it says now what an operator does instead.
      const failover = await rejects(
        noop.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: "clusterB" }),
        Code.Unavailable,
        "cannot reach cluster clusterA",
      );
      expect(failover.rawMessage).toEndWith(
        "; retry; if clusterA is down, no graceful failover can be made: fail over forced, asked of clusterB (tern operator namespace update -n orders --active-cluster clusterB)",
      );
    });
  });
}
