import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { setLink } from "../conflict/support";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { rejects } from "../support/rejects";
import { describeOn, expectActiveOn, startOrdersPair } from "./mesh";

setDefaultTimeout(90_000);

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
      // A makes B active; B has not heard yet, so it forwards a failover asked of it to A.
      await setLink(a, b, false);
      await a.client(WorkflowService).updateNamespace({ namespace: "handed", activeClusterName: "clusterB" });
      await rejects(
        b.client(OperatorService).failoverNamespace({ namespace: "handed", targetCluster: "clusterA" }),
        Code.Unavailable,
        "namespace handed is failing over: cluster clusterA says clusterB is active, and clusterB has not heard yet (request id ",
      );
      await setLink(a, b, true);
      await expectActiveOn(b, "handed", "clusterB", 2n);
      const res = await b.client(OperatorService).failoverNamespace({ namespace: "handed", targetCluster: "clusterA" });
      expect(res.namespace!.failoverVersion).toBe(101n);
    });
  });
}
