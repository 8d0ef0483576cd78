import { and, eq } from "drizzle-orm";
import { invalidArgument } from "../errors";
import type { Tx } from "../persistence/database";
import { historyEvents } from "../persistence/schema";
import { findRequest } from "./execution-store";
import { shown } from "../shown";

/**
 * The event types a write of each operation leaves where its request id points. A request
 * cancel is not listed: one already requested claims its id without writing an event.
 */
const WRITTEN: Record<string, readonly string[]> = {
  CreateWorkflowExecution: ["WORKFLOW_EXECUTION_STARTED"],
  SignalWithStartWorkflowExecution: ["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_SIGNALED"],
  SignalWorkflowExecution: ["WORKFLOW_EXECUTION_SIGNALED"],
  TerminateWorkflowExecution: ["WORKFLOW_EXECUTION_TERMINATED"],
  CompleteWorkflowExecution: ["WORKFLOW_EXECUTION_COMPLETED"],
  FailWorkflowExecution: ["WORKFLOW_EXECUTION_FAILED"],
  RecordMarker: ["MARKER_RECORDED"],
};

/**
 * The first result of requestId for a retry of operation, or undefined when no request took
 * it. An id taken by another kind of request (a terminate sent with a signal's request id) is
 * refused: answering with that request's result would report a write that never happened.
 * Read only when a write's claim of the id failed, so it costs nothing on the write path.
 */
export async function firstResultOf(db: Tx, operation: string, key: { namespaceId: string; workflowId: string; requestId: string }) {
  const first = await findRequest(db, key.namespaceId, key.workflowId, key.requestId);
  const kinds = WRITTEN[operation];
  if (!first || !kinds) return first;
  const [event] = await db
    .select({ eventType: historyEvents.eventType })
    .from(historyEvents)
    .where(and(eq(historyEvents.namespaceId, key.namespaceId), eq(historyEvents.workflowId, key.workflowId), eq(historyEvents.runId, first.runId), eq(historyEvents.eventId, first.eventId)));
  if (event && !kinds.includes(event.eventType)) {
    throw invalidArgument(
      `request id ${shown(key.requestId, { quote: true })} was already used on workflow ${key.workflowId} by another kind of request ` +
        `(event ${first.eventId} of run ${first.runId} is ${event.eventType}); give each request a request id of its own`,
    );
  }
  return first;
}
