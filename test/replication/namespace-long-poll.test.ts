import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { NAMESPACE_QUEUE_KEY, createNamespaceSender } from "../../replication/namespace-sender";
import { create } from "@bufbuild/protobuf";
import { GetNamespaceReplicationTasksRequestSchema } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createEventNotifier } from "../../src/history/notifier";
import type { Db } from "../../src/persistence/database";
import { eventually } from "../support/eventually";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

/**
 * db, whose selects, while `hold.on`, keep their result for `hold.ms` after the database
 * answered: the time between a read and what the reader does next, made long.
 */
function holdingReads(db: Db, hold: { on: boolean; ms: number; held: number }): Db {
  return new Proxy(db, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (prop !== "select" || typeof value !== "function") return value;
      return (...args: unknown[]) => {
        const selection = value.apply(target, args) as { from: (...a: unknown[]) => PromiseLike<unknown> };
        const from = selection.from.bind(selection);
        selection.from = (...a: unknown[]) => {
          // The query's methods return the query itself: its own `then` is what gets awaited.
          const query = from(...a);
          const then = query.then.bind(query);
          Object.defineProperty(query, "then", {
            value: (ok: (v: unknown) => unknown, fail: (e: unknown) => unknown) =>
              then(async (rows) => {
                if (hold.on) {
                  hold.held++;
                  await new Promise((r) => setTimeout(r, hold.ms));
                }
                return rows;
              }).then(ok, fail),
          });
          return query;
        };
        return selection;
      };
    },
  });
}

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
      const sender = createNamespaceSender({ db: holdingReads(a.server.database.db, hold), wake, pollMs: 10_000 });
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
