import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import { extendVersionHistory } from "../src/history/execution-store";
import type { VersionHistoryItem } from "../src/persistence/schema";

/** An execution's mutable state as its events define it (what a passive copy stores). */
export interface RunState {
  workflowType: string;
  taskQueue: string;
  executionTimeoutMs: number;
  startTime: Date;
  status: string;
  closeTime: Date | null;
  cancelRequested: boolean;
  nextEventId: number;
  lastWriteVersion: number;
  versionHistory: VersionHistoryItem[];
}

/** A request id an event carries: a client retry after a failover must find it. */
export interface EventRequestId {
  requestId: string;
  eventId: number;
}

const CLOSING: Record<string, string> = {
  workflowExecutionCompletedEventAttributes: "COMPLETED",
  workflowExecutionFailedEventAttributes: "FAILED",
  workflowExecutionTimedOutEventAttributes: "TIMED_OUT",
  workflowExecutionTerminatedEventAttributes: "TERMINATED",
};

/** The state of a new run whose first event is the started event. */
export function initialRunState(started: HistoryEvent): RunState {
  const a = started.attributes;
  if (a.case !== "workflowExecutionStartedEventAttributes" || started.eventId !== 1n) {
    throw new Error(`a run's history must begin with the started event as event 1, got ${a.case ?? "nothing"} as ${started.eventId}`);
  }
  return {
    workflowType: a.value.workflowType,
    taskQueue: a.value.taskQueue,
    executionTimeoutMs: Number(a.value.executionTimeoutMs),
    startTime: eventTime(started),
    status: "RUNNING",
    closeTime: null,
    cancelRequested: false,
    nextEventId: 1,
    lastWriteVersion: Number(started.version),
    versionHistory: [],
  };
}

/** The state after applying events (contiguous, from state.nextEventId) and the request ids they carry. */
export function applyEvents(state: RunState, events: HistoryEvent[]): { state: RunState; requestIds: EventRequestId[] } {
  const next = { ...state };
  const requestIds: EventRequestId[] = [];
  for (const e of events) {
    const id = Number(e.eventId);
    if (id !== next.nextEventId) throw new Error(`event ${id} does not follow event ${next.nextEventId - 1}`);
    const a = e.attributes;
    const closing = a.case ? CLOSING[a.case] : undefined;
    if (closing) {
      next.status = closing;
      next.closeTime = eventTime(e);
    }
    if (a.case === "workflowExecutionCancelRequestedEventAttributes") next.cancelRequested = true;
    const requestId = requestIdOf(e);
    if (requestId) requestIds.push({ requestId, eventId: id });
    next.versionHistory = extendVersionHistory(next.versionHistory, id, Number(e.version));
    next.lastWriteVersion = Number(e.version);
    next.nextEventId = id + 1;
  }
  return { state: next, requestIds };
}

/** The request id an event carries (signal, cancel request, start), or "". */
export function requestIdOf(e: HistoryEvent): string {
  const a = e.attributes;
  switch (a.case) {
    case "workflowExecutionStartedEventAttributes":
    case "workflowExecutionSignaledEventAttributes":
    case "workflowExecutionCancelRequestedEventAttributes":
      return a.value.requestId;
    default:
      return "";
  }
}

/** The event's write time on the source. */
export const eventTime = (e: HistoryEvent) => (e.eventTime ? timestampDate(e.eventTime) : new Date(0));
