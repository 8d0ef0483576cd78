import {
  EventType,
  type HistoryEvent,
  type VersionHistory,
  WorkflowExecutionStatus,
} from "../gen/tern/common/v1/common_pb";
import type {
  DescribeWorkflowExecutionResponse,
  WorkflowExecutionInfo,
} from "../gen/tern/workflow/v1/service_pb";
import { formatDuration, formatMillis } from "./duration";
import { enumLabel, formatFixedRow, formatKeyValues, formatTable, formatTime, truncate } from "./output";
import { decodePayloads } from "./payload";

/** Status as the Temporal CLI prints it: Running, Completed, TimedOut, ... */
export function statusLabel(status: WorkflowExecutionStatus): string {
  return enumLabel(WorkflowExecutionStatus, status);
}

/** Event type as the Temporal CLI prints it: WorkflowExecutionStarted, MarkerRecorded, ... */
export function eventTypeLabel(type: EventType): string {
  return enumLabel(EventType, type);
}

function pairs(entries: [string, string][]): string {
  return entries
    .filter(([, v]) => v !== "")
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
}

/** A short one-line summary of an event's attributes. */
export function eventDetails(event: HistoryEvent): string {
  const a = event.attributes;
  switch (a.case) {
    case "workflowExecutionStartedEventAttributes":
      return pairs([
        ["type", a.value.workflowType],
        ["taskQueue", a.value.taskQueue],
        ["input", decodePayloads(a.value.input)],
        ["timeout", a.value.executionTimeoutMs ? formatMillis(a.value.executionTimeoutMs) : ""],
      ]);
    case "workflowExecutionCompletedEventAttributes":
      return pairs([["result", decodePayloads(a.value.result)]]);
    case "workflowExecutionFailedEventAttributes":
      return pairs([
        ["message", JSON.stringify(a.value.failure?.message ?? "")],
        ["type", a.value.failure?.type ?? ""],
      ]);
    case "workflowExecutionTimedOutEventAttributes":
      return pairs([["timeout", formatMillis(a.value.executionTimeoutMs)]]);
    case "markerRecordedEventAttributes":
      return pairs([
        ["name", a.value.markerName],
        ["details", decodePayloads(a.value.details)],
      ]);
    case "workflowExecutionSignaledEventAttributes":
      return pairs([
        ["name", a.value.signalName],
        ["input", decodePayloads(a.value.input)],
      ]);
    case "workflowExecutionTerminatedEventAttributes":
      return pairs([
        ["reason", JSON.stringify(a.value.reason)],
        ["details", decodePayloads(a.value.details)],
      ]);
    case "workflowExecutionCancelRequestedEventAttributes":
      return pairs([["reason", a.value.reason ? JSON.stringify(a.value.reason) : ""]]);
    default:
      return "";
  }
}

/** Columns of `workflow show`. */
export const EVENT_HEADERS = ["EVENT ID", "VERSION", "TIME", "TYPE", "DETAILS"];
/** Fixed widths for streaming rows (show --follow), sized for typical values. */
export const EVENT_WIDTHS = [8, 8, 24, 38];
const DETAILS_MAX = 100;

/** The cells of one event row. */
export function eventRow(event: HistoryEvent): string[] {
  return [
    String(event.eventId),
    String(event.version),
    formatTime(event.eventTime),
    eventTypeLabel(event.eventType),
    truncate(eventDetails(event), DETAILS_MAX),
  ];
}

/** The history as an aligned table. */
export function eventTable(events: readonly HistoryEvent[]): string {
  return formatTable(EVENT_HEADERS, events.map(eventRow));
}

/** One event as a fixed-width line, for show --follow. */
export function eventLine(event: HistoryEvent): string {
  return formatFixedRow(eventRow(event), EVENT_WIDTHS);
}

/** The header line matching eventLine. */
export function eventHeaderLine(): string {
  return formatFixedRow(EVENT_HEADERS, EVENT_WIDTHS);
}

/** `events 1-3 @ v1, 4-7 @ v2`: which events were written at which failover version. */
export function formatVersionHistory(history: VersionHistory | undefined): string {
  let first = 1n;
  const parts: string[] = [];
  for (const item of history?.items ?? []) {
    const range = first === item.eventId ? `${first}` : `${first}-${item.eventId}`;
    parts.push(`events ${range} @ v${item.version}`);
    first = item.eventId + 1n;
  }
  return parts.join(", ");
}

/** The workflow list table. */
export function executionTable(list: readonly WorkflowExecutionInfo[]): string {
  const headers = ["WORKFLOW ID", "RUN ID", "TYPE", "STATUS", "START TIME", "CLOSE TIME"];
  const rows = list.map((w) => [
    w.execution?.workflowId ?? "",
    w.execution?.runId ?? "",
    w.workflowType,
    statusLabel(w.status),
    formatTime(w.startTime),
    formatTime(w.closeTime),
  ]);
  return formatTable(headers, rows);
}

/** `key: value` lines describing one execution. */
export function describeExecution(res: DescribeWorkflowExecutionResponse): string {
  const w = res.workflowExecutionInfo;
  return formatKeyValues([
    ["WorkflowId", w?.execution?.workflowId ?? ""],
    ["RunId", w?.execution?.runId ?? ""],
    ["Type", w?.workflowType ?? ""],
    ["TaskQueue", w?.taskQueue ?? ""],
    ["Status", statusLabel(w?.status ?? 0)],
    ["StartTime", formatTime(w?.startTime)],
    ["CloseTime", formatTime(w?.closeTime)],
    ["HistoryLength", String(w?.historyLength ?? 0n)],
    ["ExecutionTimeout", w?.workflowExecutionTimeout ? formatDuration(w.workflowExecutionTimeout) : "none"],
    ["CancelRequested", String(w?.cancelRequested ?? false)],
    ["ShardId", String(res.shardId)],
    ["NextEventId", String(res.nextEventId)],
    ["LastWriteVersion", String(res.lastWriteVersion)],
    ["VersionHistory", formatVersionHistory(res.versionHistory)],
  ]);
}
