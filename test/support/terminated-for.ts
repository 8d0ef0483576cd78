import { expect } from "bun:test";
import { EventType, WorkflowExecutionStatus } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { unjson } from "./payload";
import type { TestCluster } from "./server";

/**
 * Expects run runId of workflowId on cluster x terminated by the workflow id reuse policy
 * terminate-if-running for run newRunId: its last event the terminate, in Temporal's words.
 */
export async function expectTerminatedFor(x: TestCluster, namespace: string, workflowId: string, runId: string, newRunId: string): Promise<void> {
  const wf = x.client(WorkflowService);
  const execution = { workflowId, runId };
  expect((await wf.describeWorkflowExecution({ namespace, execution })).workflowExecutionInfo!.status).toBe(WorkflowExecutionStatus.TERMINATED);
  const last = (await wf.getWorkflowExecutionHistory({ namespace, execution, maximumPageSize: 1000 })).history!.events.at(-1)!;
  expect(EventType[last.eventType]).toBe("WORKFLOW_EXECUTION_TERMINATED");
  const a = last.attributes;
  if (a.case !== "workflowExecutionTerminatedEventAttributes") throw new Error(`last event is ${a.case}`);
  expect([a.value.reason, a.value.identity, unjson(a.value.details)]).toEqual([
    "TerminateIfRunning WorkflowIdReusePolicy Policy", "history-service", `terminated by new runID: ${newRunId}`,
  ]);
}
