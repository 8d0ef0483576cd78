import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { BackfillService } from "../../src/gen/tern/admin/v1/backfill_pb";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "t", taskQueue: "q" };
const token = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));

// A page token is the client's to send back: one that is JSON but not of the shape its
// endpoint wrote (a field missing or of another type) is INVALID_ARGUMENT, like garbage. On
// PostgreSQL a missing field used to reach the query as an undefined parameter, which the
// driver refuses only after the query joined a connection's queue: INTERNAL on an idle
// connection, the query ahead of it failed in its place on a busy one.
for (const store of await testStores()) {
  describe(`page tokens on ${store}`, () => {
    let cluster: TestCluster;
    let namespaceId: string;
    beforeAll(async () => {
      cluster = await startTestCluster({ store });
      const wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: "p" });
      await wf.startWorkflowExecution({ namespace: "p", workflowId: "a", ...T });
      namespaceId = (await wf.describeNamespace({ namespace: "p" })).namespace!.namespaceInfo!.id;
    });
    afterAll(() => cluster.destroy());

    test("TestATokenOfAnotherShapeIsInvalidArgumentOnEveryListingThatTakesOne", async () => {
      const wf = cluster.client(WorkflowService);
      const admin = cluster.client(AdminService);
      const calls: [string, (t: Uint8Array) => Promise<unknown>, unknown][] = [
        ["GetWorkflowExecutionHistory", (t) => wf.getWorkflowExecutionHistory({ namespace: "p", execution: { workflowId: "a" }, nextPageToken: t }), { runId: "x" }],
        ["ListWorkflowExecutions", (t) => wf.listWorkflowExecutions({ namespace: "p", nextPageToken: t }), { t: "2026-01-01T00:00:00Z" }],
        ["ListNamespaces", (t) => wf.listNamespaces({ nextPageToken: t }), { name: 7 }],
        ["ListClusters", (t) => cluster.client(OperatorService).listClusters({ nextPageToken: t }), {}],
        ["GetExecutionChecksums", (t) => admin.getExecutionChecksums({ namespace: "p", nextPageToken: t }), { w: "a" }],
        ["ListReplicationDlq", (t) => admin.listReplicationDlq({ nextPageToken: t }), { s: "x", h: 1 }],
        ["ListExecutionsForReplication", (t) => cluster.client(BackfillService).listExecutionsForReplication({ namespaceId, nextPageToken: t }), { workflowId: "a" }],
      ];
      for (const [name, call, shape] of calls) {
        for (const bad of [shape, [1], "x"]) {
          try {
            await rejects(call(token(bad)), Code.InvalidArgument, "next_page_token is not valid");
          } catch (e) {
            throw new Error(`${name} with ${JSON.stringify(bad)}: ${(e as Error).message}`);
          }
        }
      }
    });

    test("TestAHistoryTokenOfAnotherRunIsInvalidArgumentNotThatRunsEvents", async () => {
      const wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: "runs" }); // its runs stay out of the listings below
      const run = (runId = "") => ({ namespace: "runs", execution: { workflowId: "two-runs", runId } });
      const old = await wf.startWorkflowExecution({ namespace: "runs", workflowId: "two-runs", ...T });
      await wf.terminateWorkflowExecution({ namespace: "runs", workflowExecution: { workflowId: "two-runs" }, reason: "r" });
      const current = await wf.startWorkflowExecution({ namespace: "runs", workflowId: "two-runs", ...T });
      await wf.signalWorkflowExecution({ namespace: "runs", workflowExecution: { workflowId: "two-runs" }, signalName: "s" });
      const page = await wf.getWorkflowExecutionHistory({ ...run(current.runId), maximumPageSize: 1 });
      expect(page.nextPageToken.length).toBeGreaterThan(0);
      // Before: the old run's page 2 was the current run's signal, answered with the current run's id.
      await rejects(wf.getWorkflowExecutionHistory({ ...run(old.runId), nextPageToken: page.nextPageToken }), Code.InvalidArgument,
        `next_page_token is for run ${current.runId}, not the requested run ${old.runId}`);
      const next = await wf.getWorkflowExecutionHistory({ ...run(current.runId), nextPageToken: page.nextPageToken });
      expect(next.history!.events.map((e) => e.eventId)).toEqual([2n]);
    });

    test("TestAHistoryTokenOfAnotherWorkflowIsInvalidArgumentNotNotFound", async () => {
      const wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: "workflows" });
      const other = await wf.startWorkflowExecution({ namespace: "workflows", workflowId: "other", ...T });
      await wf.signalWorkflowExecution({ namespace: "workflows", workflowExecution: { workflowId: "other" }, signalName: "s" });
      await wf.startWorkflowExecution({ namespace: "workflows", workflowId: "mine", ...T });
      const page = await wf.getWorkflowExecutionHistory({ namespace: "workflows", execution: { workflowId: "other" }, maximumPageSize: 1 });
      expect([page.runId, page.nextPageToken.length > 0]).toEqual([other.runId, true]);
      // Before: NOT_FOUND, 'workflow execution mine run <other's run> not found in namespace workflows'.
      for (const runId of ["", other.runId]) {
        await rejects(wf.getWorkflowExecutionHistory({ namespace: "workflows", execution: { workflowId: "mine", runId }, nextPageToken: page.nextPageToken }), Code.InvalidArgument,
          "next_page_token is for workflow other, not the requested workflow mine");
      }
      // A token written before tokens named their workflow still pages its run.
      const legacy = token({ runId: other.runId, next: 2 });
      const next = await wf.getWorkflowExecutionHistory({ namespace: "workflows", execution: { workflowId: "other" }, nextPageToken: legacy });
      expect(next.history!.events.map((e) => e.eventId)).toEqual([2n]);
    });

    test("TestTokensTheServerWroteStillPage", async () => {
      const wf = cluster.client(WorkflowService);
      await wf.startWorkflowExecution({ namespace: "p", workflowId: "b", ...T });
      const first = await wf.listWorkflowExecutions({ namespace: "p", pageSize: 1 });
      const second = await wf.listWorkflowExecutions({ namespace: "p", pageSize: 1, nextPageToken: first.nextPageToken });
      expect([...first.executions, ...second.executions].map((e) => e.execution!.workflowId).sort()).toEqual(["a", "b"]);
      const checksums = await cluster.client(AdminService).getExecutionChecksums({ namespace: "p", pageSize: 1 });
      const rest = await cluster.client(AdminService).getExecutionChecksums({ namespace: "p", pageSize: 1, nextPageToken: checksums.nextPageToken });
      expect(checksums.executions.length + rest.executions.length).toBe(2);
      const runs = await cluster.client(BackfillService).listExecutionsForReplication({ namespaceId, pageSize: 1 });
      const more = await cluster.client(BackfillService).listExecutionsForReplication({ namespaceId, pageSize: 1, nextPageToken: runs.nextPageToken });
      expect([...runs.executions, ...more.executions].map((e) => e.workflowId).sort()).toEqual(["a", "b"]);
    });

    test("TestAHistoryPageOfLargePayloadsStopsAtItsByteBudget, and the next token goes on from there", async () => {
      const wf = cluster.client(WorkflowService);
      await wf.startWorkflowExecution({ namespace: "p", workflowId: "large", ...T });
      const data = new Uint8Array(1 << 20);
      for (let at = 0; at < data.length; at += 65_536) crypto.getRandomValues(data.subarray(at, at + 65_536));
      for (let i = 0; i < 6; i++) {
        await wf.signalWorkflowExecution({ namespace: "p", workflowExecution: { workflowId: "large" }, signalName: `s${i}`, input: { payloads: [{ metadata: {}, data }] } });
      }
      const ids: bigint[] = [];
      let nextPageToken: Uint8Array = new Uint8Array();
      do {
        const page = await wf.getWorkflowExecutionHistory({ namespace: "p", execution: { workflowId: "large" }, maximumPageSize: 1000, nextPageToken });
        // 1 MiB is about 1.4 MB as stored JSON: three of them reach HISTORY_PAGE_BYTES (4 MiB).
        expect(page.history!.events.length).toBeLessThanOrEqual(4);
        ids.push(...page.history!.events.map((e) => e.eventId));
        nextPageToken = page.nextPageToken;
      } while (nextPageToken.length);
      expect(ids).toEqual([1n, 2n, 3n, 4n, 5n, 6n, 7n]);
    });
  });
}
