import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { NAMESPACE_QUEUE_KEY, createNamespaceSender } from "../../replication/namespace-sender";
import { create } from "@bufbuild/protobuf";
import { GetNamespaceReplicationTasksRequestSchema } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createEventNotifier } from "../../src/history/notifier";
import { eventually } from "../support/eventually";
import { holdingReads } from "../support/holding-reads";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

for (const store of await testStores()) {
  describe(`namespace long poll on ${store}`, () => {
    let a: TestCluster;
    beforeAll(async () => {
      a = await startTestCluster({ store, name: "clusterA", enableGlobalNamespace: true });
    });
    afterAll(() => a.destroy());

    test("ATaskCommittedWhileThePollReadsTheQueueWakesIt (no wait for the re-read)", async () => {
      const wake = createEventNotifier();
      const hold = { on: false, ms: 400, held: 0 };
      const sender = createNamespaceSender({ db: holdingReads(a.server.database.db, hold), currentCluster: a.name, wake, pollMs: 10_000 });
      const wf = a.client(WorkflowService);
      await wf.registerNamespace({ namespace: "first", isGlobalNamespace: true, clusters: ["clusterA"] });
      const req = (after: bigint, waitTimeoutMs: number) => create(GetNamespaceReplicationTasksRequestSchema, { afterTaskId: after, waitTimeoutMs, pageSize: 10 });
      const maxTaskId = (await sender.getTasks(req(0n, 0))).maxTaskId ?? 0n;
      expect(maxTaskId).toBeGreaterThan(0n);

      hold.on = true;
      const t0 = performance.now();
      const polled = sender.getTasks(req(maxTaskId, 15_000)).then((r) => ({ r, at: performance.now() - t0 }));
      // The poll's read of the queue has its answer (no new task yet) and holds it: commit one now.
      await eventually(() => expect(hold.held).toBeGreaterThan(0), { interval: 5 });
      hold.on = false;
      await wf.registerNamespace({ namespace: "second", isGlobalNamespace: true, clusters: ["clusterA"] });
      wake.notify(NAMESPACE_QUEUE_KEY);
      const { r, at } = await polled;
      expect((r.tasks ?? []).map((t) => t.namespace?.namespaceInfo?.name)).toEqual(["second"]);
      // Not the 10 s re-read.
      expect(at).toBeLessThan(3_000);
    });
  });
}
