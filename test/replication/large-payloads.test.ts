import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { ANSWER_BYTES } from "../../replication/pull-budget";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { PayloadsSchema } from "../../src/gen/tern/common/v1/common_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { parseCounter } from "../../bench/lib/prom-histogram";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { createGate } from "../support/gate";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr, globalNamespace, historiesOf } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "uploads";
const MiB = 1 << 20;
const SIGNALS = 8;

/** A payload of n random bytes (incompressible, so PostgreSQL stores it at its size). */
function randomPayload(n: number) {
  const data = new Uint8Array(n);
  for (let at = 0; at < n; at += 65_536) crypto.getRandomValues(data.subarray(at, Math.min(n, at + 65_536)));
  return create(PayloadsSchema, { payloads: [{ metadata: {}, data }] });
}

/** How many tasks x's stream from `from` has read and not applied (a gauge). */
const receivedOf = (x: TestCluster, from: string) => parseCounter(x.server.metrics.render(), "replication_stream_received_tasks", { remote_cluster: from });

for (const store of await testStores()) {
  describe(`a backlog of large payloads on ${store}: pages and the reader's hold bounded by bytes, not only by tasks`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    // While the gate is closed, B's applies wait before their commit.
    const gate = createGate();

    beforeAll(async () => {
      const beforeCommit = (operation: string) => (operation === "ReplicateHistory" ? gate.held : undefined);
      [a, b] = await startClusters(store, [{ shards: 1 }, { shards: 1, serverOptions: { beforeCommit } }]);
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      nsId = await globalNamespace(a, b, NS);
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
    });
    afterAll(async () => {
      gate.open();
      await Promise.all([a.destroy(), b.destroy()]);
    });

    test("CatchesUpEightSignalsOfOneMegabyte, a few to a page and to the reader's hold", async () => {
      const wf = a.client(WorkflowService);
      await wf.startWorkflowExecution({ namespace: NS, workflowId: "upload", workflowType: "T", taskQueue: "q" });
      await eventually(async () => expect((await historiesOf(b, nsId)).length).toBe(1));

      gate.close();
      for (let i = 0; i < SIGNALS; i++) {
        await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "upload" }, signalName: `part-${i}`, input: randomPayload(MiB) });
      }
      // The first apply waits with what it took; the reader holds once an answer's bytes wait behind it.
      const mostPerAnswer = Math.ceil(ANSWER_BYTES / MiB) + 1;
      await eventually(() => expect(receivedOf(b, "clusterA")).toBeGreaterThan(0), { timeout: 15_000 });
      await Bun.sleep(500);
      expect(receivedOf(b, "clusterA")).toBeLessThanOrEqual(mostPerAnswer);

      // A page read from the database carries an answer's bytes and one task more, and says how far it got.
      const admin = a.client(AdminService);
      const seen: bigint[] = [];
      for (let after = 0n; ;) {
        const page = await admin.getReplicationTasks({ shardId: 1, afterTaskId: after, pageSize: 1000, includeEvents: true });
        expect(page.tasks.length).toBeLessThanOrEqual(mostPerAnswer);
        seen.push(...page.tasks.map((t) => t.taskId));
        if (page.lastTaskId === after) break;
        expect(page.lastTaskId).toBe(page.tasks.at(-1)!.taskId);
        after = page.lastTaskId;
      }
      // Every task once, in order (the start's may be gone: acked by B, and cleaned up).
      expect(seen.length).toBeGreaterThanOrEqual(SIGNALS);
      expect(seen).toEqual(seen.map((_, i) => seen[0]! + BigInt(i)));

      gate.open();
      await eventually(async () => expect(await historiesOf(b, nsId)).toEqual(await historiesOf(a, nsId)), { timeout: 30_000 });
      expect(receivedOf(b, "clusterA")).toBe(0);
    });

    test("PayloadsThatCompressWell are read from the database about an answer's worth to a page, not a page size's", async () => {
      // B pulls nothing meanwhile: every page read below is the operator's.
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: false });
      const wf = a.client(WorkflowService);
      // A megabyte of zeros is stored in a few kilobytes: by what is stored, 24 of them fit one answer's budget many times over.
      const zeros = create(PayloadsSchema, { payloads: [{ metadata: {}, data: new Uint8Array(MiB) }] });
      for (let i = 0; i < 24; i++) {
        await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "upload" }, signalName: `zeros-${i}`, input: zeros });
      }
      const admin = a.client(AdminService);
      const rendered = () => parseCounter(a.server.metrics.render(), "replication_page_bytes_read");
      let pages = 0;
      for (let after = 0n; ;) {
        const before = rendered();
        const page = await admin.getReplicationTasks({ shardId: 1, afterTaskId: after, pageSize: 1000, includeEvents: true });
        // Each zero megabyte renders as 1.4 MB of base64: a page renders its answer's budget and a task or two past it.
        expect(rendered() - before).toBeLessThan(2 * ANSWER_BYTES);
        if (page.lastTaskId === after) break;
        after = page.lastTaskId;
        pages++;
      }
      expect(pages).toBeGreaterThanOrEqual(5);

      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: true });
      await eventually(async () => expect(await historiesOf(b, nsId)).toEqual(await historiesOf(a, nsId)), { timeout: 60_000 });
    });
  });
}
