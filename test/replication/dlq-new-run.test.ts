import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { eq } from "drizzle-orm";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { executions, replicationDlq } from "../../src/persistence/schema";
import { connectAll, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { checkedApplier, expectSameHistories, globalNamespace } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "restarts";
const WF = "terminated-then-started";

/**
 * A run's close held in the passive cluster's DLQ when the active starts the workflow again
 * (DESIGN.md sections 4 and 6): A terminates R1 and starts R2, both at version 1; B's apply of
 * R1's terminate fails into its DLQ, so R1 is still open on B when R2's start arrives. R2
 * happens after R1 (one cluster wrote both at one version, and closed R1 first): R2 is the
 * workflow's open run on B and R1 the ZOMBIE until its terminate is merged. Before, the
 * incoming run lost every tie of versions: R2 stayed a ZOMBIE on B after the merge, and a
 * failover to B would have terminated it as a version conflict.
 */
for (const store of await testStores()) {
  describe(`a new run arriving while the last one's close is in the DLQ, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId = "";
    const poisonedRuns = new Set<string>();
    const poisoning = checkedApplier(({ runId }) => {
      if (poisonedRuns.has(runId)) throw new Error(`injected fault for run ${runId}`);
    });
    const wf = (x: TestCluster) => x.client(WorkflowService);
    const statusesOn = async (x: TestCluster) =>
      Object.fromEntries((await x.server.database.db.select().from(executions).where(eq(executions.workflowId, WF))).map((r) => [r.runId, r.status]));

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, { serverOptions: { replication: { retry: { attempts: 3, backoffMs: 5 }, wrapApplier: poisoning } } }]);
      await connectAll([a, b]);
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a, b].map((x) => x?.destroy())));

    test("TestANewRunWhosePredecessorsCloseIsInTheDlqIsTheOpenRunOnThePassive", async () => {
      const r1 = (await wf(a).startWorkflowExecution({ namespace: NS, workflowId: WF, workflowType: "T", taskQueue: "q" })).runId;
      await eventually(async () => expect(await statusesOn(b)).toEqual({ [r1]: "RUNNING" }));
      poisonedRuns.add(r1);
      await wf(a).terminateWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF, runId: r1 }, reason: "restart" });
      await eventually(async () => expect(await b.server.database.db.select().from(replicationDlq)).toHaveLength(1), { timeout: 20_000 });

      const r2 = (await wf(a).startWorkflowExecution({ namespace: NS, workflowId: WF, workflowType: "T", taskQueue: "q" })).runId;
      // R1's close is still to come on B: R2 is the open run there, R1 the ZOMBIE (before: R2 the ZOMBIE).
      await eventually(async () => expect(await statusesOn(b)).toEqual({ [r1]: "ZOMBIE", [r2]: "RUNNING" }), { timeout: 20_000 });

      poisonedRuns.delete(r1);
      const merged = await b.client(AdminService).mergeReplicationDlq({});
      expect([merged.merged, merged.failed.map((e) => e.lastError)]).toEqual([1n, []]);
      expect(await statusesOn(b)).toEqual({ [r1]: "TERMINATED", [r2]: "RUNNING" });
      await expectSameHistories(a, b, nsId);

      // R2 goes on replicating as the open run.
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF }, signalName: "after" });
      await eventually(() => expectSameHistories(a, b, nsId));
    });
  });
}
