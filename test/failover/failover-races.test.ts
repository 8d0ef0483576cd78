import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { ReplicationState } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { setLink } from "../conflict/support";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { awaitedLater, rejects } from "../support/rejects";
import { readAckLevel, namespaceQueueMax } from "../../replication/namespace-queue";
import { startHttpProxy, type HttpProxy } from "../support/http-proxy";
import { ackGate, addr, describeOn, eventuallyOn, expectActiveOn, startClusters, startOrdersPair } from "./mesh";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** "ok", or the call's Connect code and message. */
const outcome = (r: PromiseSettledResult<unknown>) =>
  r.status === "fulfilled" ? "ok" : r.reason instanceof ConnectError ? `${Code[r.reason.code]}: ${r.reason.rawMessage}` : String(r.reason);

for (const store of await testStores()) {
  describe(`graceful failover racing other namespace changes on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    beforeAll(async () => {
      [a, b] = await startOrdersPair(store);
    });
    afterAll(() => Promise.all([a, b].map((x) => x.destroy())));

    test("TestGracefulFailoverRacingNamespaceUpdates: each is done or refused by name, none is INTERNAL (a deadlock)", async () => {
      const outcomes: string[] = [];
      let version = 1n;
      for (let round = 0; round < 6; round++) {
        const [from, to] = round % 2 ? [b, a] : [a, b];
        const calls = await Promise.allSettled([
          from.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: to.name, timeout: { seconds: 10n } }),
          ...[1, 2, 3].map((k) => from.client(WorkflowService).updateNamespace({ namespace: "orders", description: `round ${round}, update ${k}` })),
        ]);
        outcomes.push(...calls.map(outcome));
        // A failover refused as the updates moved the namespace on is asked again.
        if (calls[0]!.status === "rejected") await from.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: to.name, timeout: { seconds: 10n } });
        version = version + (round % 2 ? 99n : 1n);
        await expectActiveOn(to, "orders", to.name, version);
      }
      expect(outcomes.filter((o) => o !== "ok" && !o.startsWith("FailedPrecondition: namespace orders "))).toEqual([]);
    });

    test("TestForcedFailoverRacingAnUpdateOnTheOldActive: both clusters settle on the config written at the higher failover version", async () => {
      await a.client(WorkflowService).registerNamespace({ namespace: "settings", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"], description: "registered" });
      await expectActiveOn(b, "settings", "clusterA", 1n);
      // Cut apart, A (still active as far as it knows) and B (taking over by force) each
      // move the namespace to config version 1.
      await setLink(a, b, false);
      await a.client(WorkflowService).updateNamespace({ namespace: "settings", description: "changed on A" });
      await b.client(WorkflowService).updateNamespace({ namespace: "settings", activeClusterName: "clusterB" });
      await setLink(a, b, true);
      const facts = async (x: TestCluster) => {
        const ns = await describeOn(x, "settings");
        return { description: ns.namespaceInfo!.description, configVersion: ns.configVersion, failoverVersion: ns.failoverVersion, active: ns.replicationConfig!.activeClusterName };
      };
      const settled = { description: "registered", configVersion: 1n, failoverVersion: 2n, active: "clusterB" };
      await eventually(async () => expect(await facts(a)).toEqual(settled));
      expect(await facts(b)).toEqual(settled);
    });

    test("TestGracefulFailoverAskedOfTheNewActiveBeforeItHeardIsRetryable: forwarded back, it is UNAVAILABLE, not a refusal", async () => {
      await a.client(WorkflowService).registerNamespace({ namespace: "handed", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await expectActiveOn(b, "handed", "clusterA", 1n);
      // A makes B active; B has not heard yet (A, its side disabled, serves B no pulls), so it
      // forwards a failover asked of it to A. B's side stays enabled: it forwards nothing over a
      // connection it has disabled.
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: false });
      await a.client(WorkflowService).updateNamespace({ namespace: "handed", activeClusterName: "clusterB" });
      await rejects(
        b.client(OperatorService).failoverNamespace({ namespace: "handed", targetCluster: "clusterA" }),
        Code.Unavailable,
        "namespace handed is failing over: cluster clusterA says clusterB is active, and clusterB has not heard yet (request id ",
      );
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      await expectActiveOn(b, "handed", "clusterB", 2n);
      const res = await b.client(OperatorService).failoverNamespace({ namespace: "handed", targetCluster: "clusterA" });
      expect(res.namespace!.failoverVersion).toBe(101n);
    });
  });

  // B reaches A through an HTTP proxy (its namespace polls can be failed there alone); every other pair directly.
  describe(`a forwarded graceful failover overtaken before the asker heard of it, three clusters on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster, link: HttpProxy;
    const bAcks = ackGate(); // B's history acks, held so that A's failover waits after B acked its mark
    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [{}, bAcks.options, {}]);
      link = startHttpProxy(addr(a));
      for (const [x, y] of [[a, b], [a, c], [b, c], [c, a], [c, b]] as const) await x.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(y) });
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: `127.0.0.1:${link.port}` });
      await a.client(WorkflowService).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"] });
      for (const x of [b, c]) await eventuallyOn(x, "orders", () => {});
    });
    afterAll(async () => {
      bAcks.gate.open();
      link.failPaths(undefined);
      await Promise.all([a, b, c].map((x) => x.destroy()));
      await link.close();
    });

    test("TestForwardedFailoverOvertakenBeforeTheAskerHeardAnswersAsItHearsTheLaterOne, naming the cluster that took over", async () => {
      const bAck = () => readAckLevel(a.server.database.db, { remote: "clusterB", direction: "outbound", queue: "namespace", shardId: 0 });
      // A write B applies but does not ack yet: A's failover (forwarded to it by B) waits for that ack.
      bAcks.gate.close();
      await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "unacked", workflowType: "t", taskQueue: "q" });
      let answeredAt = 0;
      // Its answer, refused, may come before the test reads it (as B hears C's change, maybe before C answers the test).
      const asked = awaitedLater(b.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: "clusterB", timeout: { seconds: 10n } })
        .finally(() => (answeredAt = performance.now())));
      // B acks the handover's mark in A's namespace queue (it hears that queue), then its polls of A fail.
      await eventuallyOn(a, "orders", (ns) => expect(ns.replicationConfig!.state).toBe(ReplicationState.HANDOVER));
      await eventually(async () => expect(await bAck()).toBe(await namespaceQueueMax(a.server.database.db)));
      link.failPaths((path) => path.endsWith("/GetNamespaceReplicationTasks"));
      bAcks.gate.open();
      // A switches to B; C hears it, B cannot. C then takes the namespace by force, and B hears that.
      await expectActiveOn(a, "orders", "clusterB", 2n);
      await expectActiveOn(c, "orders", "clusterB", 2n);
      await c.client(WorkflowService).updateNamespace({ namespace: "orders", activeClusterName: "clusterC" });
      const overtaken = performance.now();
      await rejects(
        asked,
        Code.FailedPrecondition,
        "graceful failover of namespace orders to clusterB (version 2) was overtaken by a later failover to clusterC (version 3) before clusterB heard of it: orders is active in clusterC",
      );
      // As B applies C's change (before: at B's next read of the namespace, up to 1 s later, with
      // A's answer: active in B): the answer says so; the time only that it did not wait out the
      // failover's 10 s, at half of it (C's change reaches B through its namespace poll of C).
      expect(answeredAt - overtaken).toBeLessThan(5_000);
      const here = await describeOn(b, "orders");
      expect([here.replicationConfig!.activeClusterName, here.failoverVersion]).toEqual(["clusterC", 3n]);
      link.failPaths(undefined);
      // A's switch, reaching B late, changes nothing there.
      await eventually(async () => expect(await bAck()).toBe(await namespaceQueueMax(a.server.database.db)));
      expect((await describeOn(b, "orders")).replicationConfig!.activeClusterName).toBe("clusterC");
    });
  });
}
