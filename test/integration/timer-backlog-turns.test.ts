import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout * 2);

// PostgreSQL only: on PGlite a batch runs in the server's thread, and a start this process sends
// as a batch ends is often still unread at the drain's turn (its client's send takes turns of
// the same loop): with the turns its median was still 2 batches in 1 of 3 runs on a loaded host
// (2 or 3 in every run without them), so a bound there would fail now and then (README: "mostly").
for (const store of (await testStores()).filter((s) => s === "postgres")) {
  describe(`clients' writes beside a draining backlog of due timers (${store})`, () => {
    let c: TestCluster | undefined;
    afterAll(() => c?.destroy());

    test("AClientsWriteDuringADrainWaitsForOneBatchAtMost: most starts are answered with at most one timer batch committed since they were sent", async () => {
      const runs = 600;
      // The servers' clock: two hours on once the backlog is written, so that its hour-long timeouts are all due at the restart.
      let aheadMs = 0;
      let batches = 0;
      const serverOptions = {
        now: () => new Date(Date.now() + aheadMs),
        beforeCommit: (operation: string) => void (operation === "FireTimer" && batches++),
      };
      c = await startTestCluster({ store, name: "clusterA", serverOptions });
      let wf = c.client(WorkflowService);
      await wf.registerNamespace({ namespace: "orders", isGlobalNamespace: true });
      for (let i = 0; i < runs; i += 50) {
        await Promise.all(Array.from({ length: 50 }, (_, k) => wf.startWorkflowExecution({
          namespace: "orders", workflowId: `t-${i + k}`, workflowType: "t", taskQueue: "q", workflowExecutionTimeout: create(DurationSchema, { seconds: 3600n }),
        })));
      }
      await c.stop();
      aheadMs = 7_200_000;
      const first = c;
      c = await startTestCluster({ store, name: "clusterA", dataLocation: c.dataLocation, serverOptions });
      c.destroy = async () => {
        await c!.stop();
        await first.destroy();
      };
      wf = c.client(WorkflowService);
      // Every batch of 50 but one is still to commit while the starts are answered.
      const spans: number[] = [];
      for (let i = 0; i < 6 && batches < runs / 50 - 1; i++) {
        const before = batches;
        await wf.startWorkflowExecution({ namespace: "orders", workflowId: `client-${i}`, workflowType: "t", taskQueue: "q" });
        spans.push(batches - before);
      }
      expect(spans.length).toBeGreaterThanOrEqual(3);
      // Most wait for the batch under way when the start was sent, no more: before the turns every
      // one waited for two or three (the request was read only once the next batch had begun, and
      // waited for it too). Not all: a start this process sends just as a batch ends is at times
      // still unread at the drain's turn (its client's send takes turns of this loop too).
      const median = [...spans].sort((a, b) => a - b)[Math.floor(spans.length / 2)]!;
      expect(median).toBeLessThanOrEqual(1);
      expect(Math.max(...spans)).toBeLessThanOrEqual(2);
      expect(batches).toBeLessThan(runs / 50);
    });
  });
}
