import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { sql } from "drizzle-orm";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { rowsOf } from "../../src/persistence/raw-statements";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "t", taskQueue: "q" };
const NUL = "contains a NUL character (U+0000), which tern cannot store";

describe("a NUL (U+0000) in any string of a request is INVALID_ARGUMENT naming the field, on PostgreSQL", () => {
  let cluster: TestCluster;
  beforeAll(async () => {
    cluster = await startTestCluster({ store: "postgres" });
    await cluster.client(WorkflowService).registerNamespace({ namespace: "n" });
    await cluster.client(WorkflowService).startWorkflowExecution({ namespace: "n", workflowId: "w", ...T });
  });
  afterAll(() => cluster.destroy());

  test("fields, nested fields, list items, map keys and values, in JSON and binary; nothing is written", async () => {
    const binary = createClient(WorkflowService, createConnectTransport({ baseUrl: cluster.url, useBinaryFormat: true }));
    for (const wf of [cluster.client(WorkflowService), binary]) {
      // Before: "a value in the request cannot be stored: invalid byte sequence ..." or
      // "... unsupported Unicode escape sequence", naming no field.
      await rejects(wf.startWorkflowExecution({ namespace: "n", workflowId: "a\u0000", ...T }), Code.InvalidArgument, `workflow_id ${NUL}`);
      await rejects(wf.startWorkflowExecution({ namespace: "n", workflowId: "a", ...T, identity: "i\u0000" }), Code.InvalidArgument, `identity ${NUL}`);
      await rejects(
        wf.signalWorkflowExecution({ namespace: "n", workflowExecution: { workflowId: "w", runId: "r\u0000" }, signalName: "s" }),
        Code.InvalidArgument,
        `workflow_execution.run_id ${NUL}`,
      );
      await rejects(
        wf.signalWorkflowExecution({ namespace: "n", workflowExecution: { workflowId: "w" }, signalName: "s", input: { payloads: [{}, { metadata: { "enc\u0000": new Uint8Array([1]) } }] } }),
        Code.InvalidArgument,
        `input.payloads[1].metadata key "enc\\u0000" ${NUL}`,
      );
      await rejects(wf.registerNamespace({ namespace: "m", data: { k: "v\u0000" } }), Code.InvalidArgument, `data["k"] ${NUL}`);
      await rejects(wf.listWorkflowExecutions({ namespace: "n", workflowIdPrefix: "w\u0000" }), Code.InvalidArgument, `workflow_id_prefix ${NUL}`);
    }
    const [row] = rowsOf(await cluster.server.database.db.execute(sql`select (select count(*)::int from executions) as runs, (select count(*)::int from namespaces) as namespaces`));
    expect(row).toEqual({ runs: 1, namespaces: 1 });
  });

  test("an operator call with one is INVALID_ARGUMENT, not the UNAVAILABLE a client retries for good", async () => {
    const op = cluster.client(OperatorService);
    // Before: UNAVAILABLE, "cannot reach a tern cluster at http://127.0.0.1:1\u0000: fetch() URL is invalid".
    await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: "127.0.0.1:1\u0000" }), Code.InvalidArgument, `frontend_address ${NUL}`);
    await rejects(op.describeCluster({ clusterName: "c\u0000" }), Code.InvalidArgument, `cluster_name ${NUL}`);
  });
});
