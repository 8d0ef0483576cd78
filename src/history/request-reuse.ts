import { and, eq, inArray, sql } from "drizzle-orm";
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

/** The event id a request id's claim names when its request wrote no event (a cancel of a run already cancel-requested). */
export const NO_EVENT = 0;

/**
 * The first result of requestId for a retry of operation, or undefined when no request took
 * it. An id taken by another kind of request (a terminate sent with a signal's request id) is
 * refused: answering with that request's result would report a write that never happened. So is
 * one taken by a request that wrote no event, and, for a signal-with-start, one taken by a plain
 * start (its run's first event, with no signal of that request id after it).
 * Read only when a write's claim of the id failed, so it costs nothing on the write path.
 */
export async function firstResultOf(db: Tx, operation: string, key: { namespaceId: string; workflowId: string; requestId: string }) {
  const first = await findRequest(db, key.namespaceId, key.workflowId, key.requestId);
  const kinds = WRITTEN[operation];
  if (!first || !kinds) return first;
  const events = await db
    .select({ eventId: historyEvents.eventId, eventType: historyEvents.eventType, signalRequestId: sql<string | null>`${historyEvents.attributes} -> 'workflowExecutionSignaledEventAttributes' ->> 'requestId'` })
    .from(historyEvents)
    .where(and(eq(historyEvents.namespaceId, key.namespaceId), eq(historyEvents.workflowId, key.workflowId), eq(historyEvents.runId, first.runId), inArray(historyEvents.eventId, [first.eventId, first.eventId + 1])));
  const event = events.find((e) => e.eventId === first.eventId);
  const signalled = events.some((e) => e.eventId === first.eventId + 1 && e.signalRequestId === key.requestId);
  const taken =
    first.eventId === NO_EVENT ? `(it wrote no event on run ${first.runId})` :
    event && !kinds.includes(event.eventType) ? `(event ${first.eventId} of run ${first.runId} is ${event.eventType})` :
    event && operation === "SignalWithStartWorkflowExecution" && event.eventType === "WORKFLOW_EXECUTION_STARTED" && !signalled ? `(it started run ${first.runId} without a signal)` :
    undefined;
  if (taken) {
    throw invalidArgument(
      `request id ${shown(key.requestId, { quote: true })} was already used on workflow ${key.workflowId} by another kind of request ` +
        `${taken}; give each request a request id of its own`,
    );
  }
  return first;
}
