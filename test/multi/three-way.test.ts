import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { EventType } from "../../src/gen/tern/common/v1/common_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { ReplicationState, type NamespaceDescription } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { expectNoDifference, historyOf, setLink } from "../conflict/support";
import { eventually } from "../support/eventually";
import { createGate } from "../support/gate";
import { awaitedLater, rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy";
import { testStores, type StoreKind } from "../support/stores";
import { ackGate, addr, connectAll, describeOn, eventuallyOn, expectActiveOn, startClusters } from "../failover/mesh";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";
const T = { workflowType: "order", taskQueue: "q" };
const wf = (x: TestCluster) => x.client(WorkflowService);
const frontendOf = (x: TestCluster) => ({ host: "127.0.0.1", port: Number(addr(x).split(":")[1]) });

/** signal name -> how many times the run's current history on x holds it. */
async function signalsOn(x: TestCluster, workflowId: string): Promise<Map<string, number>> {
  const seen = new Map<string, number>();
  for (const e of await historyOf(x, NS, workflowId)) {
    if (e.eventType !== EventType.WORKFLOW_EXECUTION_SIGNALED || e.attributes.case !== "workflowExecutionSignaledEventAttributes") continue;
    const name = e.attributes.value.signalName;
    seen.set(name, (seen.get(name) ?? 0) + 1);
  }
  return seen;
}

/** NS over clusterA, B and C, registered on A (active there), once B and C hold it. */
async function registerOrders([a, b, c]: [TestCluster, TestCluster, TestCluster]): Promise<void> {
  await wf(a).registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"] });
  await Promise.all([b, c].map((x) => expectActiveOn(x, NS, "clusterA", 1n)));
}

/** clusterA, B and C on store, connected both ways, with NS registered (registerOrders). */
async function startOrdersMesh(store: StoreKind): Promise<[TestCluster, TestCluster, TestCluster]> {
  const clusters = await startClusters(store, [{}, {}, {}]);
  await connectAll(clusters);
  await registerOrders(clusters);
  return clusters;
}

/**
 * A's graceful failover to C, asked of `asked`, whose switch (version 3) reaches C after B, cut off
 * from A, was forced active at 2 and C heard of it (cSwitches holds C's view of the switch): the
 * answer is C's refusal, and A takes B's 2 back from C.
 */
async function overtakenAfterTheLastCheck([a, b, c]: [TestCluster, TestCluster, TestCluster], asked: TestCluster, cSwitches: ReturnType<typeof createGate>): Promise<void> {
  await wf(a).startWorkflowExecution({ namespace: NS, workflowId: "late", ...T });
  await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "late" }, signalName: "on-a", requestId: "on-a" });
  await eventually(() => expectNoDifference([a, b, c], NS), { timeout: 20_000 });
  // B, cut off from A, never hears the switch from A. C checked at 1 twice, then A switches at 3.
  await setLink(a, b, false);
  cSwitches.close();
  const answer = awaitedLater(asked.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterC", timeout: durationFromMs(20_000) }));
  await expectActiveOn(a, NS, "clusterC", 3n);
  expect((await describeOn(c, NS)).failoverVersion).toBe(1n);
  // Before C applies the switch, B is forced active at 2, C hears of it, and B acknowledges a write at 2.
  expect((await wf(b).updateNamespace({ namespace: NS, activeClusterName: "clusterB" })).namespace!.failoverVersion).toBe(2n);
  await expectActiveOn(c, NS, "clusterB", 2n);
  await wf(b).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "late" }, signalName: "on-b", requestId: "on-b" });
  await eventually(async () => expect(Object.fromEntries(await signalsOn(c, "late"))).toEqual({ "on-a": 1, "on-b": 1 }));
  // Taken at C, the switch's 3 would top B's 2 there and then at B: B's write at 2 would lose its branch.
  cSwitches.open();
  // The failover's answer says the switch did not take at C (before, it answered ok once C acked the task it refused).
  await rejects(
    answer,
    Code.FailedPrecondition,
    "graceful failover of namespace orders to clusterC: the switch (version 3) was made on clusterA, but clusterC refused the switch because a failover made elsewhere reached it first; " +
      "orders is active in clusterB at version 2 now (clusterA takes that from clusterC once it hears it)",
  );
  await expectActiveOn(a, NS, "clusterB", 2n);
  expect(ReplicationState[(await describeOn(a, NS)).replicationConfig!.state]).toBe("NORMAL");
  await setLink(a, b, true);
  await Promise.all([a, b, c].map((x) => expectActiveOn(x, NS, "clusterB", 2n)));
  await wf(b).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "late" }, signalName: "after", requestId: "after" });
  await eventually(async () => {
    await expectNoDifference([a, b, c], NS);
    for (const x of [a, b, c]) {
      expect([x.name, Object.fromEntries(await signalsOn(x, "late")), (await historyOf(x, NS, "late")).map((e) => e.version)])
        .toEqual([x.name, { "on-a": 1, "on-b": 1, after: 1 }, [1n, 1n, 2n, 2n]]);
    }
  }, { timeout: 20_000 });
}

/**
 * For one describe: clusterA, B and C on store with NS registered (registerOrders), C's apply of
 * the changes that make it active held while cSwitches is closed; after, the gate opened and all
 * destroyed. mesh.abc is filled once beforeAll ran.
 */
function meshWithCSwitchesHeld(store: StoreKind) {
  const cSwitches = createGate();
  const mesh = {} as { abc: [TestCluster, TestCluster, TestCluster] };
  beforeAll(async () => {
    const beforeNamespaceApply = (ns: NamespaceDescription) => (ns.replicationConfig?.activeClusterName === "clusterC" ? cSwitches.held : undefined) ?? Promise.resolve();
    mesh.abc = await startClusters(store, [{}, {}, { serverOptions: { replication: { beforeNamespaceApply } } }]) as [TestCluster, TestCluster, TestCluster];
    await connectAll(mesh.abc);
    await registerOrders(mesh.abc);
  });
  afterAll(async () => {
    cSwitches.open();
    await Promise.all((mesh.abc ?? []).map((x) => x?.destroy()));
  });
  return { mesh, cSwitches };
}

for (const store of await testStores()) {
  describe(`three clusters fail over among themselves on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    beforeAll(async () => ([a, b, c] = await startOrdersMesh(store)));
    afterAll(() => Promise.all([a, b, c].map((x) => x?.destroy())));

    test("TestGracefulFailoverWhileCIsCutOffThenCReturnsWithEveryEventOnce", async () => {
      await wf(a).startWorkflowExecution({ namespace: NS, workflowId: "cut", ...T });
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "cut" }, signalName: "before", requestId: "before" });
      await eventually(() => expectNoDifference([a, b, c], NS), { timeout: 20_000 });
      await Promise.all([setLink(a, c, false), setLink(b, c, false)]);
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "cut" }, signalName: "a-while-cut", requestId: "a-while-cut" });
      await wf(a).startWorkflowExecution({ namespace: NS, workflowId: "cut-new-on-a", ...T });
      const res = await a.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterB", timeout: durationFromMs(10_000) });
      expect([res.namespace!.failoverVersion, res.unconfirmed]).toEqual([2n, ""]);
      // Answered once B confirmed it took the switch: B holds it already.
      expect([(await describeOn(b, NS)).replicationConfig!.activeClusterName, (await describeOn(b, NS)).failoverVersion]).toEqual(["clusterB", 2n]);
      await wf(b).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "cut" }, signalName: "b-while-cut", requestId: "b-while-cut" });
      await wf(b).startWorkflowExecution({ namespace: NS, workflowId: "cut-new-on-b", ...T });
      expect((await describeOn(c, NS)).replicationConfig!.activeClusterName).toBe("clusterA");

      await Promise.all([setLink(a, c, true), setLink(b, c, true)]);
      await expectActiveOn(c, NS, "clusterB", 2n);
      await eventually(() => expectNoDifference([a, b, c], NS), { timeout: 20_000 });
      for (const x of [a, b, c]) {
        expect([x.name, Object.fromEntries(await signalsOn(x, "cut"))]).toEqual([x.name, { before: 1, "a-while-cut": 1, "b-while-cut": 1 }]);
        expect((await historyOf(x, NS, "cut")).map((e) => e.version)).toEqual([1n, 1n, 1n, 2n]);
        expect(ReplicationState[(await describeOn(x, NS)).replicationConfig!.state]).toBe("NORMAL");
      }
      // C takes B's writes from now on, as the other passive cluster does.
      await wf(b).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "cut-new-on-a" }, signalName: "after", requestId: "after" });
      await eventually(async () => expect(Object.fromEntries(await signalsOn(c, "cut-new-on-a"))).toEqual({ after: 1 }));
    });

    test("TestFailoverChainABCAUnderWriteLoadLosesNoAcknowledgedWrite", async () => {
      const ids = ["chain-0", "chain-1", "chain-2"];
      // Active in B (the test before): the chain goes B -> C -> A -> B.
      for (const id of ids) await wf(b).startWorkflowExecution({ namespace: NS, workflowId: id, ...T });
      const acked: string[] = [];
      let stop = false;
      const unexpected: string[] = [];
      const senders = ids.map(async (id) => {
        for (let n = 0; !stop; n++) {
          const name = `${id}#${n}`;
          for (let landed = false; !landed && !stop;) {
            for (const x of [a, b, c]) {
              try {
                await wf(x).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: id }, signalName: name, requestId: name });
                acked.push(name);
                landed = true;
                break;
              } catch (e) {
                const code = (e as ConnectError).code;
                if (code !== Code.FailedPrecondition && code !== Code.Unavailable) unexpected.push(`${x.name} ${name}: ${(e as Error).message}`);
              }
            }
          }
        }
      });
      const waitForWrites = async (more: number) => {
        const at = acked.length;
        await eventually(() => expect(acked.length).toBeGreaterThan(at + more), { timeout: 20_000 });
      };
      await waitForWrites(10);
      for (const [from, to] of [[b, c], [c, a], [a, b]] as const) {
        const res = await from.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: to.name, timeout: durationFromMs(15_000) });
        expect(res.namespace!.replicationConfig!.activeClusterName).toBe(to.name);
        await waitForWrites(10);
      }
      stop = true;
      await Promise.all(senders);
      expect(unexpected).toEqual([]);
      await eventually(() => expectNoDifference([a, b, c], NS), { timeout: 30_000 });
      for (const id of ids) {
        for (const x of [a, b, c]) {
          const seen = await signalsOn(x, id);
          for (const name of acked.filter((n) => n.startsWith(`${id}#`))) expect(`${x.name} ${name} ${seen.get(name)}`).toBe(`${x.name} ${name} 1`);
          for (const [name, count] of seen) expect(`${x.name} ${name} ${count}`).toBe(`${x.name} ${name} 1`);
        }
      }
      for (const x of [a, b, c]) expect(ReplicationState[(await describeOn(x, NS)).replicationConfig!.state]).toBe("NORMAL");
      const versions = await Promise.all([a, b, c].map(async (x) => (await describeOn(x, NS)).failoverVersion));
      expect(new Set(versions).size).toBe(1);
    });
  });

  describe(`a forced failover to a cluster cut off from the other two on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    beforeAll(async () => ([a, b, c] = await startOrdersMesh(store)));
    afterAll(() => Promise.all([a, b, c].map((x) => x?.destroy())));

    test("TestForcedFailoverToTheIsolatedClusterWinsEverywhereAndTheMajoritysSignalsAreReappliedOnce", async () => {
      for (const id of ["s-0", "s-1"]) {
        await wf(a).startWorkflowExecution({ namespace: NS, workflowId: id, ...T });
        await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: id }, signalName: "before", requestId: `before-${id}` });
      }
      await eventually(() => expectNoDifference([a, b, c], NS), { timeout: 20_000 });
      await Promise.all([setLink(a, c, false), setLink(b, c, false)]);
      // A and B go on at version 1; C, alone, is forced active at version 3.
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "s-0" }, signalName: "a-split", requestId: "a-split-0" });
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "s-1" }, signalName: "a-split", requestId: "a-split-1" });
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "s-1" }, signalName: "a-split-more", requestId: "a-split-more-1" });
      await eventually(async () => expect(Object.fromEntries(await signalsOn(b, "s-1"))).toEqual({ before: 1, "a-split": 1, "a-split-more": 1 }));
      const forced = await wf(c).updateNamespace({ namespace: NS, activeClusterName: "clusterC" });
      expect(forced.namespace!.failoverVersion).toBe(3n);
      await wf(c).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "s-0" }, signalName: "c-split", requestId: "c-split-0" });
      await wf(c).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "s-1" }, signalName: "c-split", requestId: "c-split-1" });

      await Promise.all([setLink(a, c, true), setLink(b, c, true)]);
      await Promise.all([a, b, c].map((x) => expectActiveOn(x, NS, "clusterC", 3n)));
      await eventually(async () => {
        await expectNoDifference([a, b, c], NS);
        for (const x of [a, b, c]) {
          expect([x.name, Object.fromEntries(await signalsOn(x, "s-0"))]).toEqual([x.name, { before: 1, "c-split": 1, "a-split": 1 }]);
          expect([x.name, Object.fromEntries(await signalsOn(x, "s-1"))]).toEqual([x.name, { before: 1, "c-split": 1, "a-split": 1, "a-split-more": 1 }]);
          const h = await historyOf(x, NS, "s-1");
          expect([x.name, h.map((e) => e.version)]).toEqual([x.name, [1n, 1n, 3n, 3n, 3n]]);
        }
      }, { timeout: 30_000 });
    });
  });

  describe(`each of three clusters active at once, cut off from the others, on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    beforeAll(async () => ([a, b, c] = await startOrdersMesh(store)));
    afterAll(() => Promise.all([a, b, c].map((x) => x?.destroy())));

    test("TestThreeWaySplitConvergesOnTheHighestVersionAndReappliesBothLosingBranchesSignalsOnce", async () => {
      for (const id of ["t-0", "t-1"]) await wf(a).startWorkflowExecution({ namespace: NS, workflowId: id, ...T });
      await eventually(() => expectNoDifference([a, b, c], NS), { timeout: 20_000 });
      await Promise.all([setLink(a, b, false), setLink(a, c, false), setLink(b, c, false)]);
      await wf(b).updateNamespace({ namespace: NS, activeClusterName: "clusterB" });
      await wf(c).updateNamespace({ namespace: NS, activeClusterName: "clusterC" });
      // Every cluster writes the same runs at the same event ids, each at its own version.
      for (const x of [a, b, c]) {
        for (const id of ["t-0", "t-1"]) {
          await wf(x).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: id }, signalName: `${x.name}-1`, requestId: `${x.name}-${id}-1` });
        }
      }
      await wf(b).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "t-1" }, signalName: "clusterB-2", requestId: "clusterB-t-1-2" });
      // The links heal one at a time: B's branch meets A's first, then C's meets both.
      await setLink(a, b, true);
      await expectActiveOn(a, NS, "clusterB", 2n);
      await setLink(b, c, true);
      await setLink(a, c, true);
      await Promise.all([a, b, c].map((x) => expectActiveOn(x, NS, "clusterC", 3n)));
      await eventually(async () => {
        await expectNoDifference([a, b, c], NS);
        for (const x of [a, b, c]) {
          expect([x.name, Object.fromEntries(await signalsOn(x, "t-0"))]).toEqual([x.name, { "clusterA-1": 1, "clusterB-1": 1, "clusterC-1": 1 }]);
          expect([x.name, Object.fromEntries(await signalsOn(x, "t-1"))]).toEqual([x.name, { "clusterA-1": 1, "clusterB-1": 1, "clusterB-2": 1, "clusterC-1": 1 }]);
          const versions = (await historyOf(x, NS, "t-1")).map((e) => e.version);
          expect([x.name, versions.slice(0, 2)]).toEqual([x.name, [1n, 3n]]);
          expect([x.name, versions.every((v, i) => i === 0 || v >= versions[i - 1]!)]).toEqual([x.name, true]);
        }
      }, { timeout: 30_000 });
    });
  });

  describe(`graceful failovers to a cluster cut off from the one active before, on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    beforeAll(async () => ([a, b, c] = await startOrdersMesh(store)));
    afterAll(() => Promise.all([a, b, c].map((x) => x?.destroy())));

    test("TestGracefulFailoverWaitsUntilTheTargetHasWhatTheSourceTookFromAThirdCluster", async () => {
      await wf(a).startWorkflowExecution({ namespace: NS, workflowId: "third", ...T });
      await a.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterB", timeout: durationFromMs(10_000) });
      await expectActiveOn(b, NS, "clusterB", 2n);
      // A is cut off from B; B completes the run, C takes it from B, and B hands over to C.
      await setLink(a, b, false);
      await wf(b).completeWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "third" } });
      await eventually(async () => expect((await historyOf(c, NS, "third")).map((e) => e.eventType)).toEqual([EventType.WORKFLOW_EXECUTION_STARTED, EventType.WORKFLOW_EXECUTION_COMPLETED]));
      await b.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterC", timeout: durationFromMs(10_000) });
      await expectActiveOn(c, NS, "clusterC", 3n);
      // A has acked all C wrote, yet lacks B's completion, which reaches it only from B: not made active without it.
      await expect(c.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterA", timeout: durationFromMs(1_500) }))
        .rejects.toThrow(/cluster clusterA applied clusterB's history shard \d+ up to task 0, clusterC up to [1-9]\d*: what clusterB wrote reaches clusterA only from clusterB; orders stays active in clusterC/);
      expect((await describeOn(a, NS)).replicationConfig!.activeClusterName).toBe("clusterC");
      // Reconnected to B, A catches up and the failover goes through: the run stays completed.
      await setLink(a, b, true);
      await c.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterA", timeout: durationFromMs(10_000) });
      await expectActiveOn(a, NS, "clusterA", 101n);
      await rejects(
        wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "third" }, signalName: "late", requestId: "late" }),
        Code.FailedPrecondition, "is already closed",
      );
      await eventually(() => expectNoDifference([a, b, c], NS), { timeout: 20_000 });
    });

    // TERN_CHAOS_SEED=1 (3 clusters, 40 steps) on PostgreSQL: a signal A took at its forced version was moved by C's switch to B.
    test("TestGracefulFailoverFromACopyThatMissedAForcedFailoverIsRefused", async () => {
      await a.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterC", timeout: durationFromMs(10_000) });
      await Promise.all([a, b, c].map((x) => expectActiveOn(x, NS, "clusterC", 103n)));
      // C, cut off from A, still thinks itself active at 103 while A is forced active at 201 and B hears of it.
      await setLink(a, c, false);
      const forced = await wf(a).updateNamespace({ namespace: NS, activeClusterName: "clusterA" });
      expect(forced.namespace!.failoverVersion).toBe(201n);
      await expectActiveOn(b, NS, "clusterA", 201n);
      expect((await describeOn(c, NS)).failoverVersion).toBe(103n);
      // Switched from C, B would take 202, above A's 201: A's writes at 201 would lose to C's branch.
      await rejects(
        c.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterB", timeout: durationFromMs(10_000) }),
        Code.FailedPrecondition, "cluster clusterB holds orders at failover version 201 (active in clusterA), above 103 here: this cluster missed a failover",
      );
      expect(ReplicationState[(await describeOn(c, NS)).replicationConfig!.state]).toBe("NORMAL");
      await expectActiveOn(b, NS, "clusterA", 201n);
      await setLink(a, c, true);
      await Promise.all([a, b, c].map((x) => expectActiveOn(x, NS, "clusterA", 201n)));
    });
  });

  describe(`a forced failover that reaches the target during a graceful failover's wait, on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    const cAcks = ackGate(); // C's acks, held so that A's failover to C waits while B is forced active
    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [{}, {}, cAcks.options]);
      await connectAll([a, b, c]);
      await registerOrders([a, b, c]);
    });
    afterAll(async () => {
      cAcks.gate.open();
      await Promise.all([a, b, c].map((x) => x?.destroy()));
    });

    test("TestGracefulFailoverOvertakenAtItsTargetByAForcedFailoverIsAbandoned", async () => {
      await wf(a).startWorkflowExecution({ namespace: NS, workflowId: "raced", ...T });
      await eventually(() => expectNoDifference([a, b, c], NS), { timeout: 20_000 });
      // A write C applies but does not ack: A's failover to C waits in HANDOVER.
      cAcks.gate.close();
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "raced" }, signalName: "on-a", requestId: "on-a" });
      await Promise.all([b, c].map((x) => eventually(async () => expect(Object.fromEntries(await signalsOn(x, "raced"))).toEqual({ "on-a": 1 }))));
      const asked = awaitedLater(a.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterC", timeout: durationFromMs(20_000) }));
      await eventuallyOn(a, NS, (ns) => expect(ns.replicationConfig!.state).toBe(ReplicationState.HANDOVER));
      // B, cut off from A, is forced active at 2: C hears of it, A does not.
      await setLink(a, b, false);
      expect((await wf(b).updateNamespace({ namespace: NS, activeClusterName: "clusterB" })).namespace!.failoverVersion).toBe(2n);
      await expectActiveOn(c, NS, "clusterB", 2n);
      await wf(b).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "raced" }, signalName: "on-b", requestId: "on-b" });
      await eventually(async () => expect(Object.fromEntries(await signalsOn(c, "raced"))).toEqual({ "on-a": 1, "on-b": 1 }));
      // C acks A's handover now. Switched from A's 1, C would take 3, above B's 2: B's writes at 2 would lose their branch.
      cAcks.gate.open();
      await rejects(
        asked,
        Code.FailedPrecondition,
        "cluster clusterC heard of a later failover during the graceful failover of namespace orders: it holds it at failover version 2 (active in clusterB), above 1",
      );
      expect(ReplicationState[(await describeOn(a, NS)).replicationConfig!.state]).toBe("NORMAL");
      await expectActiveOn(c, NS, "clusterB", 2n);
      await setLink(a, b, true);
      await Promise.all([a, b, c].map((x) => expectActiveOn(x, NS, "clusterB", 2n)));
      await eventually(() => expectNoDifference([a, b, c], NS), { timeout: 20_000 });
      for (const x of [a, b, c]) {
        expect([x.name, Object.fromEntries(await signalsOn(x, "raced")), (await historyOf(x, NS, "raced")).at(-1)!.version]).toEqual([x.name, { "on-a": 1, "on-b": 1 }, 2n]);
      }
    });
  });

  for (const [askedOf, scenario] of [
    ["clusterA", "TestGracefulSwitchOvertakenAtItsTargetAfterItsLastCheckIsRefusedThereAndUndoneAtItsIssuer"],
    // Before, C forwarded the call to A, which left the confirmation to C, and C waited only for the switch: ok after 5 s.
    ["clusterC", "TestGracefulSwitchAskedOfItsTargetAndOvertakenThereIsRefusedAsWhenAskedOfTheIssuer"],
  ] as const) {
    describe(`a forced failover that reaches the target after the switch's last check, asked of ${askedOf}, on ${store}`, () => {
      const { mesh, cSwitches } = meshWithCSwitchesHeld(store); // the switch reaches C late

      test(scenario, async () => {
        await overtakenAfterTheLastCheck(mesh.abc, askedOf === "clusterA" ? mesh.abc[0] : mesh.abc[2], cSwitches);
      });
    });
  }

  describe(`a graceful switch refused at its target while its issuer is cut off from it, on ${store}`, () => {
    const { mesh, cSwitches } = meshWithCSwitchesHeld(store); // held until A is cut off from C

    // No background asking at the issuer: the refusal reaches it by the way any answer of C's would (C's namespace queue).
    test("TestUnconfirmedSwitchRefusedAtItsTargetIsUndoneAtItsIssuerOnceReconnected", async () => {
      const [a, b, c] = mesh.abc;
      await setLink(a, b, false);
      cSwitches.close();
      const answer = awaitedLater(a.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterC", timeout: durationFromMs(2_000) }));
      await expectActiveOn(a, NS, "clusterC", 3n);
      expect((await wf(b).updateNamespace({ namespace: NS, activeClusterName: "clusterB" })).namespace!.failoverVersion).toBe(2n);
      await expectActiveOn(c, NS, "clusterB", 2n);
      // A cut off from C before C refuses the switch (on A's side: C's, disabled, would wait for its held apply), so A's answer cannot say what C did.
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(c), enableRemoteClusterConnection: false });
      cSwitches.open();
      const res = await answer;
      expect([res.namespace!.failoverVersion, res.unconfirmed]).toEqual([3n, expect.stringContaining("clusterC has acked namespace task ")]);
      expect((await describeOn(a, NS)).replicationConfig!.activeClusterName).toBe("clusterC");
      await setLink(a, c, true);
      await expectActiveOn(a, NS, "clusterB", 2n);
      await setLink(a, b, true);
      await Promise.all([a, b, c].map((x) => expectActiveOn(x, NS, "clusterB", 2n)));
    });
  });

  describe(`a cluster cut off during a graceful failover that returns after the old active went away, on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    beforeAll(async () => ([a, b, c] = await startOrdersMesh(store)));
    afterAll(() => Promise.all([a, b, c].map((x) => x?.destroy())));

    test("TestClusterBackAfterTheOldActiveWentAwayHearsTheSwitchFromTheNewActive", async () => {
      await wf(a).startWorkflowExecution({ namespace: NS, workflowId: "gone", ...T });
      await eventually(() => expectNoDifference([a, b, c], NS), { timeout: 20_000 });
      await Promise.all([setLink(a, c, false), setLink(b, c, false)]);
      await a.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterB", timeout: durationFromMs(10_000) });
      await expectActiveOn(b, NS, "clusterB", 2n);
      await wf(b).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "gone" }, signalName: "on-b", requestId: "on-b" });
      // A goes away for good (its server down); C comes back to B alone.
      await a.stop();
      await setLink(b, c, true);
      await eventually(async () => expect(Object.fromEntries(await signalsOn(c, "gone"))).toEqual({ "on-b": 1 }));
      // C hears of the switch from B: it names B active, and its writes go there.
      await expectActiveOn(c, NS, "clusterB", 2n);
    });
  });

  describe(`a cluster down during graceful failovers, on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    /** How A and B reach C: its address stays while C restarts on another port. */
    let toC: TcpProxy;
    /** C as first started, which owns its data: removed at the end. */
    let firstC: TestCluster | undefined;
    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [{}, {}, {}]);
      toC = await startTcpProxy(frontendOf(c));
      for (const [x, y] of [[a, b], [b, a], [c, a], [c, b]] as const) await x.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(y) });
      for (const x of [a, b]) await x.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: `127.0.0.1:${toC.port}` });
      await registerOrders([a, b, c]);
    });
    afterAll(async () => {
      await Promise.all([a, b, c].map((x) => x?.destroy()));
      await firstC?.destroy();
      await toC?.close();
    });

    test("TestClusterDownDuringFailoversABAndBAComesBackWithEveryEventOnce", async () => {
      await wf(a).startWorkflowExecution({ namespace: NS, workflowId: "down", ...T });
      await eventually(() => expectNoDifference([a, b, c], NS), { timeout: 20_000 });
      await c.stop();
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "down" }, signalName: "a-1", requestId: "a-1" });
      await a.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterB", timeout: durationFromMs(10_000) });
      await expectActiveOn(b, NS, "clusterB", 2n);
      await wf(b).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "down" }, signalName: "b-1", requestId: "b-1" });
      await wf(b).startWorkflowExecution({ namespace: NS, workflowId: "down-b", ...T });
      await b.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterA", timeout: durationFromMs(10_000) });
      await expectActiveOn(a, NS, "clusterA", 101n);
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "down" }, signalName: "a-2", requestId: "a-2" });
      // A failover to C while it is down (behind its proxy: each connection reset) is refused at once, naming why, and changes nothing.
      await expect(a.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterC", timeout: durationFromMs(1_000) }))
        .rejects.toThrow(/cluster clusterC cannot be reached at .+ \((connection refused|connection reset on each of 2 tries: .+)\).+; orders stays active in clusterA$/);

      firstC = c;
      c = await startTestCluster({ store, name: "clusterC", initialFailoverVersion: 3, dataLocation: c.dataLocation });
      toC.retarget(frontendOf(c));
      await expectActiveOn(c, NS, "clusterA", 101n);
      await eventually(async () => {
        await expectNoDifference([a, b, c], NS);
        expect(Object.fromEntries(await signalsOn(c, "down"))).toEqual({ "a-1": 1, "b-1": 1, "a-2": 1 });
        expect((await historyOf(c, NS, "down")).map((e) => e.version)).toEqual([1n, 1n, 2n, 101n]);
      }, { timeout: 20_000 });
      // And C, caught up, can be made active gracefully.
      await a.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterC", timeout: durationFromMs(10_000) });
      await expectActiveOn(c, NS, "clusterC", 103n);
    });
  });
}
