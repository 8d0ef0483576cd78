import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { parseCounter } from "../../bench/lib/prom-histogram";
import { toBinary } from "@bufbuild/protobuf";
import { AdminService, GetWorkflowExecutionRawHistoryResponseSchema } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { connectAll, startClusters } from "../failover/mesh";
import { json } from "../support/payload";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { backfillDone, historyOf, T } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "long";
const SIGNALS = 40;
/** Each signal's input: about 8 KB of attributes once stored. */
const INPUT = json("x".repeat(8_000));
/** B's raw history page for backfill, and the page this test asks A for: some 8 signals. */
const PAGE_BYTES = 64 << 10;

/** An event's size on the wire: a page may pass its budget by its last event. */
const EVENT_BYTES = 16 << 10;

/** How many GetWorkflowExecutionRawHistory calls x has served. */
const rawHistoryCalls = (x: TestCluster) => parseCounter(x.server.metrics.render(), "service_requests", { operation: "GetWorkflowExecutionRawHistory" });

for (const store of await testStores()) {
  describe(`a long history on ${store}: raw history and backfill come a page of bytes at a time`, () => {
    let a: TestCluster, b: TestCluster;
    let runId: string;
    let namespaceId: string;

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, { serverOptions: { replication: { historyPageBytes: PAGE_BYTES } } }]);
      await connectAll([a, b]);
      // Global, on A alone: B joins once the history exists and backfills it.
      const wf = a.client(WorkflowService);
      await wf.registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: ["clusterA"] });
      namespaceId = (await wf.describeNamespace({ namespace: NS })).namespace!.namespaceInfo!.id;
      runId = (await wf.startWorkflowExecution({ namespace: NS, workflowId: "w", ...T })).runId;
      for (let i = 0; i < SIGNALS; i++) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "w" }, signalName: `s${i}`, input: INPUT });
    });
    afterAll(async () => {
      await Promise.all([a.destroy(), b.destroy()]);
    });

    test("TestRawHistoryPagesByBytes: every event once, in order, no answer past its budget by more than one event", async () => {
      const admin = a.client(AdminService);
      const ids: number[] = [];
      let pages = 0;
      for (let first = 1n; ; pages++) {
        const res = await admin.getWorkflowExecutionRawHistory({ namespaceId, workflowId: "w", runId, firstEventId: first, maximumPageBytes: BigInt(PAGE_BYTES) });
        if (res.events.length === 0) break;
        expect(toBinary(GetWorkflowExecutionRawHistoryResponseSchema, res).length).toBeLessThan(PAGE_BYTES + EVENT_BYTES);
        ids.push(...res.events.map((e) => Number(e.eventId)));
        first = res.events.at(-1)!.eventId + 1n;
        if (first >= res.nextEventId) break;
      }
      expect(ids).toEqual(Array.from({ length: SIGNALS + 1 }, (_, i) => i + 1));
      expect(pages).toBeGreaterThanOrEqual(4);
      // Without the cap the whole range is one answer, as before.
      const whole = await admin.getWorkflowExecutionRawHistory({ namespaceId, workflowId: "w", runId });
      expect(whole.events.length).toBe(SIGNALS + 1);
    });

    test("TestLongHistoryBackfillsToClusterJoiningLater in pages of events", async () => {
      const before = rawHistoryCalls(a);
      await a.client(WorkflowService).updateNamespace({ namespace: NS, clusters: ["clusterA", "clusterB"] });
      await backfillDone(b, NS, "clusterA");
      expect(await historyOf(b, NS, "w", runId)).toEqual(await historyOf(a, NS, "w", runId));
      // About 330 KB of events at 64 KB a page: one answer held them all before.
      expect(rawHistoryCalls(a) - before).toBeGreaterThanOrEqual(4);
    });
  });
}
