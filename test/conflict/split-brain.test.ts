import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { eq } from "drizzle-orm";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { EventType, WorkflowExecutionStatus } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { namespaces } from "../../src/persistence/schema";
import { connectAll, describeOn, expectActiveOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { json } from "../support/payload";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { cancelRequestIds, dlqLines, expectNoDifference, historyOf, setLink, signalCounts, signalKey, versionBreachesOn } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";
const T = { workflowType: "order", taskQueue: "q" };
/** Written on A before the split, then on both sides during it. */
const SHARED = ["w-0", "w-1", "w-2"];
/** Written on A before the split; signalled on A and terminated on B during it. */
const CLOSED = "closed-on-b";
/** Events every shared run holds before the split: started, one signal. */
const PREFIX = 2;

for (const store of await testStores()) {
  describe(`split brain after a forced failover on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    const wf = (x: TestCluster) => x.client(WorkflowService);
    /** Every signal some cluster acknowledged, per workflow id: signalKey(name, payload). */
    const acked = new Map<string, string[]>();
    /** The signals A acknowledged during the split (its branch loses), per workflow id. */
    const onA = new Map<string, string[]>();

    async function signal(x: TestCluster, workflowId: string, name: string, payload: string, requestId = `${name}-${payload}`) {
      await wf(x).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId }, signalName: name, input: json(payload), requestId });
      const key = signalKey(name, payload);
      acked.set(workflowId, [...(acked.get(workflowId) ?? []), key]);
      if (x === a) onA.set(workflowId, [...(onA.get(workflowId) ?? []), key]);
    }

    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [{}, {}, {}]);
      await connectAll([a, b, c]);
      await wf(a).registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"] });
      await Promise.all([b, c].map((x) => expectActiveOn(x, NS, "clusterA", 1n)));
      for (const id of [...SHARED, CLOSED]) {
        await wf(a).startWorkflowExecution({ namespace: NS, workflowId: id, ...T });
        await signal(a, id, "before", id);
      }
      await eventually(() => expectNoDifference([a, b, c], NS), { timeout: 20_000 });

      // A is cut off from B and C; B is forced active while A still believes it is.
      await Promise.all([setLink(a, b, false), setLink(a, c, false)]);
      const forced = await wf(b).updateNamespace({ namespace: NS, activeClusterName: "clusterB" });
      expect(forced.namespace!.failoverVersion).toBe(2n);
      await expectActiveOn(c, NS, "clusterB", 2n);
      expect((await describeOn(a, NS)).replicationConfig!.activeClusterName).toBe("clusterA");

      // Both sides write the same runs at the same event ids: A at version 1, B at version 2.
      await signal(a, "w-0", "a-split", "w-0");
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "w-0" }, signalName: "a-noid", input: json("w-0") });
      acked.get("w-0")!.push(signalKey("a-noid", "w-0"));
      onA.get("w-0")!.push(signalKey("a-noid", "w-0"));
      await signal(a, "w-1", "a-split", "w-1#1"); // A's branch is the longer one, and still loses
      await signal(a, "w-1", "a-split", "w-1#2");
      await wf(a).requestCancelWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "w-2" }, reason: "split", requestId: "a-cancel-w-2" });
      await signal(a, CLOSED, "a-split", CLOSED);
      await wf(a).startWorkflowExecution({ namespace: NS, workflowId: "only-a", ...T });
      await signal(a, "only-a", "a-only", "only-a");

      for (const id of SHARED) await signal(b, id, "b-split", id);
      await wf(b).terminateWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: CLOSED }, reason: "closed during the split" });
      await wf(b).startWorkflowExecution({ namespace: NS, workflowId: "only-b", ...T });
      await signal(b, "only-b", "b-only", "only-b");

      await Promise.all([setLink(a, b, true), setLink(a, c, true)]);
    });
    afterAll(() => Promise.all([a, b, c].map((x) => x?.destroy())));

    /** A's losing branch of a run as x lists it (the non-current branch holding version-1 events past the split). */
    async function losingBranchOn(x: TestCluster, workflowId: string, { namespace = NS, version = 1n, after = PREFIX } = {}) {
      const res = await x.client(AdminService).listHistoryBranches({ namespace, workflowId });
      return res.branches.find((br) => !br.current && br.events.some((e) => e.eventId > BigInt(after) && e.version === version));
    }

    let converged: Promise<void> | undefined;
    /**
     * Waits until B (active) has resolved every conflict with all of A's split writes and
     * no two clusters differ. Resolving and re-applying happen in one transaction on B,
     * so equal histories after that include the re-applied signals.
     */
    const convergence = () =>
      (converged ??= eventually(async () => {
        for (const id of [...SHARED, CLOSED]) {
          const lost = await losingBranchOn(b, id);
          expect(lost, `clusterB holds no losing branch of ${id}`).toBeDefined();
          const held = signalCounts(lost!.events);
          for (const key of onA.get(id) ?? []) expect(held.get(key), `${key} on the losing branch of ${id}`).toBe(1);
        }
        await expectNoDifference([a, b, c], NS);
      }, { timeout: 60_000 }).catch(async (e) => {
        const dlq = (await Promise.all([a, b, c].map(dlqLines))).flat();
        throw new Error(`clusters did not converge: ${(e as Error).message}\n${dlq.join("\n")}`);
      }));

    test("TestEveryClusterConvergesOnTheHigherVersionBranch", async () => {
      await convergence();
      for (const x of [a, b, c]) {
        for (const id of SHARED) {
          const events = await historyOf(x, NS, id);
          // The first event past the split is B's (version 2), whatever arrived first, although A wrote more on w-1.
          const first = events[PREFIX]!;
          expect([x.name, id, first.eventType, first.version]).toEqual([x.name, id, EventType.WORKFLOW_EXECUTION_SIGNALED, 2n]);
          expect(first.attributes.case === "workflowExecutionSignaledEventAttributes" && first.attributes.value.signalName).toBe("b-split");
          expect(events.slice(PREFIX).map((e) => e.version)).toEqual(events.slice(PREFIX).map(() => 2n));
        }
      }
    });

    test("TestSignalsAndCancelRequestsOfTheLosingBranchAreReappliedExactlyOnce", async () => {
      await convergence();
      const wrong: string[] = [];
      for (const x of [a, b, c]) {
        for (const id of [...SHARED, "only-a", "only-b"]) {
          const counts = signalCounts(await historyOf(x, NS, id));
          for (const key of acked.get(id)!) if (counts.get(key) !== 1) wrong.push(`${x.name} ${id}: ${key} appears ${counts.get(key) ?? 0} times`);
        }
        const w2 = await historyOf(x, NS, "w-2");
        expect([x.name, cancelRequestIds(w2).length]).toEqual([x.name, 1]);
        const described = await wf(x).describeWorkflowExecution({ namespace: NS, execution: { workflowId: "w-2" } });
        expect([x.name, described.workflowExecutionInfo!.cancelRequested]).toEqual([x.name, true]);
      }
      expect(wrong).toEqual([]);
    });

    test("TestSignalOnRunClosedOnWinningBranchStaysOnlyOnTheLosingBranch", async () => {
      await convergence();
      const key = signalKey("a-split", CLOSED);
      for (const x of [a, b, c]) {
        const events = await historyOf(x, NS, CLOSED);
        expect([x.name, events.at(-1)!.eventType, events.at(-1)!.version]).toEqual([x.name, EventType.WORKFLOW_EXECUTION_TERMINATED, 2n]);
        expect([x.name, signalCounts(events).get(key)]).toEqual([x.name, undefined]);
        const described = await wf(x).describeWorkflowExecution({ namespace: NS, execution: { workflowId: CLOSED } });
        expect(described.workflowExecutionInfo!.status).toBe(WorkflowExecutionStatus.TERMINATED);
      }
      // Not lost: the old active still shows it, on the branch that lost.
      const lost = await losingBranchOn(a, CLOSED);
      expect(lost).toBeDefined();
      expect(signalCounts(lost!.events).get(key)).toBe(1);
    });

    test("TestFailoverVersionsOnlyGrowOnEveryHistory", async () => {
      await convergence();
      const breaches: string[] = [];
      for (const x of [a, b, c]) {
        for (const id of [...SHARED, CLOSED, "only-a", "only-b"]) breaches.push(...(await versionBreachesOn(x, NS, id)));
      }
      expect(breaches).toEqual([]);
    });

    test("TestOldActiveLearnsOfTheForcedFailoverOnceReconnected", async () => {
      await expectActiveOn(a, NS, "clusterB", 2n);
    });

    test("TestOldActiveKeepsItsLosingBranchVisible", async () => {
      await convergence();
      const res = await a.client(AdminService).listHistoryBranches({ namespace: NS, workflowId: "w-0" });
      expect(res.branches[0]!.current).toBe(true);
      expect(res.branches[0]!.events.map((e) => e.eventId)).toEqual((await historyOf(a, NS, "w-0")).map((e) => e.eventId));
      const lost = res.branches.find((br) => !br.current);
      expect(lost).toBeDefined();
      expect(lost!.forkEventId).toBe(BigInt(PREFIX));
      expect(lost!.versionHistory!.items.at(-1)!.version).toBe(1n);
      expect(lost!.events.map((e) => [e.eventId, e.version])).toEqual([[1n, 1n], [2n, 1n], [3n, 1n], [4n, 1n]]);
      const counts = signalCounts(lost!.events);
      expect([counts.get(signalKey("a-split", "w-0")), counts.get(signalKey("a-noid", "w-0"))]).toEqual([1, 1]);
      // The other clusters got A's branch after B's and keep it too.
      for (const x of [b, c]) expect([x.name, (await losingBranchOn(x, "w-0"))?.forkEventId]).toEqual([x.name, BigInt(PREFIX)]);
    });

    test("TestWorkflowsStartedOnOneSideDuringTheSplitReplicate", async () => {
      // No conflict here, and the conflicting runs must not hold these up.
      await eventually(async () => {
        for (const x of [a, b, c]) {
          expect([x.name, (await historyOf(x, NS, "only-a")).map((e) => e.version)]).toEqual([x.name, [1n, 1n]]);
          expect([x.name, (await historyOf(x, NS, "only-b")).map((e) => e.version)]).toEqual([x.name, [2n, 2n]]);
        }
      }, { timeout: 20_000 });
    });

    test("TestOldActiveRefusesWritesBelowTheRunsVersionWithUnavailable", async () => {
      await eventually(async () => expect((await historyOf(a, NS, "only-b")).length).toBe(2), { timeout: 20_000 });
      // The window before namespace replication reaches A: its namespace row still says
      // A is active at version 1, while only-b already holds B's version-2 events.
      const db = a.server.database.db;
      const [saved] = await db.select().from(namespaces).where(eq(namespaces.name, NS));
      await db.update(namespaces).set({ activeClusterName: "clusterA", failoverVersion: 1 }).where(eq(namespaces.name, NS));
      try {
        let wrote = false;
        const refused = await eventually(async () => {
          const e = await wf(a)
            .signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "only-b" }, signalName: "stale", requestId: "stale-on-a" })
            .then(() => { wrote = true; }, (err: unknown) => err);
          if (wrote) return undefined;
          // FAILED_PRECONDITION (not active) until A's namespace cache expires.
          expect(Code[(e as ConnectError).code]).toBe(Code[Code.Unavailable]);
          return e as ConnectError;
        }, { timeout: 10_000 });
        expect(wrote).toBe(false);
        expect(refused!.rawMessage).toContain("failover version 2");
      } finally {
        await db.update(namespaces).set({ activeClusterName: saved!.activeClusterName, failoverVersion: saved!.failoverVersion }).where(eq(namespaces.name, NS));
      }
      expect(signalCounts(await historyOf(a, NS, "only-b")).get(signalKey("stale", undefined))).toBeUndefined();
    });

    test("TestBranchLostOnlyWhereItsNamespaceWasPassiveIsStillReappliedOnce", async () => {
      // Its own namespace: every link is up again here, and "orders" is done with.
      const ns = "relay";
      const key = signalKey("on-b", "relay");
      await wf(a).registerNamespace({ namespace: ns, isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"] });
      await Promise.all([b, c].map((x) => expectActiveOn(x, ns, "clusterA", 1n)));
      await wf(a).startWorkflowExecution({ namespace: ns, workflowId: "relay", ...T });
      await eventually(async () => {
        for (const x of [b, c]) expect((await historyOf(x, ns, "relay")).length).toBe(1);
      });
      // B, cut off, is forced active and acknowledges a signal at version 2.
      await Promise.all([setLink(b, a, false), setLink(b, c, false)]);
      await wf(b).updateNamespace({ namespace: ns, activeClusterName: "clusterB" });
      await wf(b).signalWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "relay" }, signalName: "on-b", input: json("relay"), requestId: "relay-on-b" });
      // C is forced active too (version 3) and writes the same event id: B's branch will lose.
      await wf(c).updateNamespace({ namespace: ns, activeClusterName: "clusterC" });
      await expectActiveOn(a, ns, "clusterC", 3n);
      await wf(c).signalWorkflowExecution({ namespace: ns, workflowExecution: { workflowId: "relay" }, signalName: "on-c", input: json("relay"), requestId: "relay-on-c" });
      await eventually(async () => expect((await historyOf(a, ns, "relay")).length).toBe(2));
      // B's branch reaches A while C is active: A keeps it as a losing branch.
      await setLink(a, b, true);
      await eventually(async () => expect(signalCounts((await losingBranchOn(a, "relay", { namespace: ns, version: 2n, after: 1 }))?.events ?? []).get(key)).toBe(1));
      // A becomes active, then C (passive now) meets B's branch last.
      await wf(a).updateNamespace({ namespace: ns, activeClusterName: "clusterA" });
      await setLink(b, c, true);
      await Promise.all([a, b, c].map((x) => expectActiveOn(x, ns, "clusterA", 101n)));
      // The acknowledged signal must still land on the current branch, once, everywhere.
      await eventually(async () => {
        await expectNoDifference([a, b, c], ns);
        for (const x of [a, b, c]) expect([x.name, signalCounts(await historyOf(x, ns, "relay")).get(key)]).toEqual([x.name, 1]);
      }, { timeout: 20_000 });
    });
  });
}
