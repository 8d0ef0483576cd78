import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { startTestCluster, type TestCluster } from "../support/server";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "t", taskQueue: "q" };

describe("a Connect JSON request is read strictly: a field or enum value name the server does not know is INVALID_ARGUMENT", () => {
  let cluster: TestCluster;
  beforeAll(async () => {
    cluster = await startTestCluster({ store: "pglite" });
    await cluster.client(WorkflowService).registerNamespace({ namespace: "n" });
  });
  afterAll(() => cluster.destroy());

  const post = (method: string, body: object) =>
    fetch(`${cluster.url}/tern.workflow.v1.WorkflowService/${method}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) }).then(
      async (r) => ({ status: r.status, ...((await r.json()) as object) }),
    );

  test("TestAMisspeltReusePolicyStartsNoSecondRun", async () => {
    const reject = { namespace: "n", workflowId: "w", ...T, workflowIdReusePolicy: "WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE" };
    expect(await post("StartWorkflowExecution", reject)).toMatchObject({ status: 200, started: true });
    await cluster.client(WorkflowService).completeWorkflowExecution({ namespace: "n", workflowExecution: { workflowId: "w" } });
    // Before: 200, a second run under the default policy (allow duplicate), the misspelt name dropped.
    const misspelt = await post("StartWorkflowExecution", { ...reject, workflowIdReusePolicy: "WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATES" });
    expect(misspelt).toMatchObject({ status: 400, code: "invalid_argument" });
    expect((misspelt as { message?: string }).message).toContain("cannot decode enum tern.common.v1.WorkflowIdReusePolicy from JSON");
    const misnamed = await post("StartWorkflowExecution", { ...reject, workflowIdReusePolicy: undefined, workflowIdReusePolcy: "WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE" });
    expect(misnamed).toMatchObject({ status: 400, code: "invalid_argument" });
    expect((misnamed as { message?: string }).message).toContain("workflowIdReusePolcy");
    const runs = await cluster.client(WorkflowService).listWorkflowExecutions({ namespace: "n" });
    expect(runs.executions).toHaveLength(1);
    // The known names still read, and the refused ones changed nothing: REJECT_DUPLICATE holds.
    expect(await post("StartWorkflowExecution", reject)).toMatchObject({ status: 409, code: "already_exists" });
  });
});
