import { create, fromJson, toJson, type JsonObject } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  EventType,
  HistoryEventSchema,
  type HistoryEvent,
  type Payloads,
} from "../gen/tern/common/v1/common_pb";
import type { historyEvents } from "../persistence/schema";

/** The attributes oneof of a HistoryEvent: which kind of event and its fields. */
export type EventAttributes = HistoryEvent["attributes"];

const TYPE_OF_CASE: Record<NonNullable<EventAttributes["case"]>, EventType> = {
  workflowExecutionStartedEventAttributes: EventType.WORKFLOW_EXECUTION_STARTED,
  workflowExecutionCompletedEventAttributes: EventType.WORKFLOW_EXECUTION_COMPLETED,
  workflowExecutionFailedEventAttributes: EventType.WORKFLOW_EXECUTION_FAILED,
  workflowExecutionTimedOutEventAttributes: EventType.WORKFLOW_EXECUTION_TIMED_OUT,
  markerRecordedEventAttributes: EventType.MARKER_RECORDED,
  workflowExecutionSignaledEventAttributes: EventType.WORKFLOW_EXECUTION_SIGNALED,
  workflowExecutionTerminatedEventAttributes: EventType.WORKFLOW_EXECUTION_TERMINATED,
  workflowExecutionCancelRequestedEventAttributes: EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED,
};

/** The event type an attributes case stands for. */
export function eventTypeOf(attributes: EventAttributes): EventType {
  if (!attributes.case) throw new Error("event without attributes");
  return TYPE_OF_CASE[attributes.case];
}

type EventRow = typeof historyEvents.$inferSelect;

/** The stored form of attributes: protobuf JSON holding the one oneof key. */
export function attributesToJson(attributes: EventAttributes): Record<string, unknown> {
  return toJson(HistoryEventSchema, create(HistoryEventSchema, { attributes })) as Record<string, unknown>;
}

/** A stored event row as the API's HistoryEvent. */
export function eventFromRow(row: Pick<EventRow, "eventId" | "version" | "eventTime" | "attributes">): HistoryEvent {
  const event = fromJson(HistoryEventSchema, row.attributes as JsonObject, { ignoreUnknownFields: true });
  event.eventId = BigInt(row.eventId);
  event.version = BigInt(row.version);
  event.eventTime = timestampFromDate(row.eventTime);
  event.eventType = eventTypeOf(event.attributes);
  return event;
}

/** Sum of payload data bytes, for the blob size limit. */
export function payloadBytes(...all: (Payloads | undefined)[]): number {
  let n = 0;
  for (const p of all) for (const one of p?.payloads ?? []) {
    n += one.data.byteLength;
    for (const v of Object.values(one.metadata)) n += v.byteLength;
  }
  return n;
}
