import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { expectActiveOn, startOrdersPair } from "./mesh";

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
  });
}
