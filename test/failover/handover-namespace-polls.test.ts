import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { ReplicationState } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { readAck } from "../../replication/namespace-queue";
import { expectSameHistories } from "../replication/support";
import { eventually } from "../support/eventually";
import { startHttpLinkedPair } from "../support/linked-pair";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { describeOn, eventuallyOn, expectActiveOn } from "./mesh";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";
const failover = (x: TestCluster, target: string, seconds: number) =>
  x.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: target, timeout: { seconds: BigInt(seconds) } });
const start = (x: TestCluster, workflowId: string) => x.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId, workflowType: "T", taskQueue: "q" });

for (const store of await testStores()) {
  describe(`graceful failover to a cluster whose namespace polls fail while its history flows, on ${store}`, () => {
    const pair = {} as Awaited<ReturnType<typeof startHttpLinkedPair>>;
    beforeAll(async () => Object.assign(pair, await startHttpLinkedPair(store, [{}, {}])));
    afterAll(() => pair.close());

    test("TestGracefulFailoverToAClusterThatDoesNotHearTheNamespaceQueueIsRefusedAndWritesGoOnInTheSource", async () => {
      const { a, b, link, nsId } = pair;
      await a.client(WorkflowService).updateNamespace({ namespace: NS, description: "v1" });
      await eventuallyOn(b, NS, (ns) => expect(ns.namespaceInfo!.description).toBe("v1"));

      // A proxy passes B's history stream from A and fails its polls of A's namespace queue.
      link.failPaths((path) => path.endsWith("/GetNamespaceReplicationTasks"));
      try {
        await start(a, "before-failover");
        await eventually(() => expectSameHistories(a, b, nsId));
        const err = await rejects(failover(a, "clusterB", 2), Code.Unavailable, "graceful failover of namespace orders to clusterB timed out after 2000ms: ");
        expect(err.rawMessage).toMatch(/cluster clusterB has not polled clusterA's namespace queue since \d{4}-\d\d-\d\dT[\d:.]+Z \(acked up to task \d+ of \d+\), so it would not hear the switch/);
        expect(err.rawMessage).toContain("orders stays active in clusterA (replication state NORMAL)");
        // Before: A answered success and saw B active, B still saw A active: both refused writes until B's polls came back.
        for (const x of [a, b]) {
          const ns = await describeOn(x, NS);
          expect(ns.replicationConfig).toMatchObject({ activeClusterName: "clusterA", state: ReplicationState.NORMAL });
          expect(ns.failoverVersion).toBe(1n);
        }
        await start(a, "after-refusal");
        await eventually(() => expectSameHistories(a, b, nsId));
      } finally {
        link.failPaths(undefined);
      }

      // B hears the namespace queue again: the same failover goes through.
      const res = await failover(a, "clusterB", 10);
      expect(res.namespace!.replicationConfig!.activeClusterName).toBe("clusterB");
      await expectActiveOn(b, NS, "clusterB", res.namespace!.failoverVersion);
      await start(b, "after-failover");
    });
  });
}

for (const store of await testStores()) {
  describe(`graceful failover to a cluster that has not polled the namespace queue for long, on ${store}`, () => {
    // B polls A's namespace queue every 300 ms while it hears it; A takes 2 s without a poll as not hearing.
    const pair = {} as Awaited<ReturnType<typeof startHttpLinkedPair>>;
    beforeAll(async () => Object.assign(pair, await startHttpLinkedPair(store, [
      { serverOptions: { replication: { namespacePollsLateMs: 2_000 } } },
      { serverOptions: { replication: { waitMs: 300 } } },
    ])));
    afterAll(() => pair.close());
    /** When A recorded B's last poll of its namespace queue (undefined before the first). */
    const lastPoll = async () => (await readAck(pair.a.server.database.db, { remote: "clusterB", direction: "outbound", queue: "namespace", shardId: 0 })).updatedAt;

    test("TestAClusterPollsTheNamespaceQueueAtItsConfiguredWait (B's waitMs, not the receiver's own 20 s)", async () => {
      await eventuallyOn(pair.b, NS, () => {});
      // A records each of B's polls: four in 5 s (before: two at most, each held 20 s). B's first
      // may not be recorded yet when B has the namespace (it came by the first poll's answer).
      const seen = new Set<number>();
      await eventually(async () => {
        const at = await lastPoll();
        if (at) seen.add(at.getTime());
        expect(seen.size).toBeGreaterThan(3);
      }, { timeout: 5_000, interval: 50 });
    });

    test("TestGracefulFailoverToAClusterWhoseNamespacePollsStoppedLongAgoIsRefusedAtOnce, before HANDOVER", async () => {
      const { a, b, link, nsId } = pair;
      await eventuallyOn(b, NS, () => {});
      link.failPaths((path) => path.endsWith("/GetNamespaceReplicationTasks"));
      try {
        await start(a, "unheard-namespace");
        await eventually(() => expectSameHistories(a, b, nsId));
        await eventually(async () => expect(Date.now() - (await lastPoll())!.getTime()).toBeGreaterThan(2_500), { timeout: 10_000 });
        const asked = performance.now();
        const err = await rejects(failover(a, "clusterB", 10), Code.FailedPrecondition, "cluster clusterB has not polled clusterA's namespace queue since ");
        // At once: no HANDOVER held A's writes for the failover's 10 s (before: UNAVAILABLE once they
        // passed): bounded at half of them, which tells the two apart with a loaded host's room.
        expect(performance.now() - asked).toBeLessThan(5_000);
        expect(err.rawMessage).toMatch(/ s ago\), so it would not hear the switch; fix that first, or fail over forced on clusterB itself \(made on clusterA, clusterB would not hear it either\); orders stays active in clusterA$/);
        expect((await describeOn(a, NS)).replicationConfig).toMatchObject({ activeClusterName: "clusterA", state: ReplicationState.NORMAL });
        await start(a, "after-refusal");
      } finally {
        link.failPaths(undefined);
      }
      await eventually(async () => expect(Date.now() - (await lastPoll())!.getTime()).toBeLessThan(1_000));
      const res = await failover(a, "clusterB", 10);
      await expectActiveOn(b, NS, "clusterB", res.namespace!.failoverVersion);
    });
  });
}
