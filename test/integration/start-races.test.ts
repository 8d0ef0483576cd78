import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { EventType } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "t", taskQueue: "q" };

for (const store of await testStores()) {
  describe(`starts racing on one workflow id on ${store}`, () => {
    let cluster: TestCluster;
    let wf: ReturnType<typeof cluster.client<typeof WorkflowService>>;
    beforeAll(async () => {
      cluster = await startTestCluster({ store });
      wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: "ns" });
    });
    afterAll(() => cluster.destroy());

    test("TestSignalWithStartRacingOnAClosedRun: one call starts the next run, every other signals it; none is ALREADY_EXISTS", async () => {
      for (let round = 0; round < 5; round++) {
        const workflowId = `closed-${round}`;
        await wf.startWorkflowExecution({ namespace: "ns", workflowId, ...T });
        await wf.terminateWorkflowExecution({ namespace: "ns", workflowExecution: { workflowId }, reason: "done" });
        const calls = await Promise.allSettled(
          Array.from({ length: 20 }, (_, i) => wf.signalWithStartWorkflowExecution({ namespace: "ns", workflowId, ...T, signalName: "s", requestId: `${workflowId}-${i}` })),
        );
        const failed = calls.flatMap((c) => (c.status === "rejected" ? [`${Code[(c.reason as ConnectError).code]}: ${(c.reason as ConnectError).rawMessage}`] : []));
        expect(failed).toEqual([]);
        const answers = calls.map((c) => (c as PromiseFulfilledResult<{ runId: string; started: boolean }>).value);
        expect(new Set(answers.map((a) => a.runId)).size).toBe(1);
        expect(answers.filter((a) => a.started).length).toBe(1);
        const events = (await wf.getWorkflowExecutionHistory({ namespace: "ns", execution: { workflowId }, maximumPageSize: 100 })).history!.events;
        expect(events[0]!.eventType).toBe(EventType.WORKFLOW_EXECUTION_STARTED);
        expect(events.filter((e) => e.eventType === EventType.WORKFLOW_EXECUTION_SIGNALED).length).toBe(20);
      }
    });
  });
}
