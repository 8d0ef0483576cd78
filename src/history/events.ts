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
  const large = swapLargeBytes(attributes.value);
  let json: Record<string, unknown>;
  try {
    json = toJson(HistoryEventSchema, create(HistoryEventSchema, { attributes })) as Record<string, unknown>;
  } finally {
    for (const l of large) l.restore();
  }
  if (large.length > 0) {
    const byMarker = new Map(large.map((l) => [l.marker, l.bytes]));
    putBase64(json, byMarker);
  }
  return json;
}

/**
 * Bytes fields this long or longer are rendered to base64 here rather than by protobuf-es, which
 * builds the string a character at a time: 20-45 ms for a megabyte on the event loop, where
 * Uint8Array's toBase64 takes under a millisecond (btoa, where there is none, about 3 ms).
 */
const LARGE_BYTES = 4096;

/**
 * Replaces each large bytes field under value with a marker of its own (a random 18 bytes, so
 * no payload of a caller's can be taken for one), to be put back with restore().
 */
function swapLargeBytes(value: unknown): { marker: string; bytes: Uint8Array; restore(): void }[] {
  const found: { marker: string; bytes: Uint8Array; restore(): void }[] = [];
  // for...in, not Object.entries: this runs for every event written, and allocates nothing.
  const visit = (o: Record<string, unknown>, depth: number) => {
    if (depth > 32) return;
    for (const k in o) {
      const v = o[k];
      if (v instanceof Uint8Array) {
        if (v.byteLength < LARGE_BYTES) continue;
        const stand = crypto.getRandomValues(new Uint8Array(18));
        o[k] = stand;
        found.push({ marker: toBase64(stand), bytes: v, restore: () => void (o[k] = v) });
      } else if (typeof v === "object" && v !== null) {
        visit(v as Record<string, unknown>, depth + 1);
      }
    }
  };
  if (typeof value === "object" && value !== null) visit(value as Record<string, unknown>, 0);
  return found;
}

/** Puts each marker's bytes, as base64, where toJson wrote the marker. */
function putBase64(json: Record<string, unknown>, byMarker: Map<string, Uint8Array>): void {
  for (const k in json) {
    const v = json[k];
    if (typeof v === "string") {
      const bytes = byMarker.get(v);
      if (bytes) json[k] = toBase64(bytes);
    } else if (typeof v === "object" && v !== null) {
      putBase64(v as Record<string, unknown>, byMarker);
    }
  }
}

/**
 * A HistoryEvent from its stored attributes JSON. Long strings (base64 of 4 KiB or more, or
 * long text) stand aside for markers while protobuf-es reads the rest, whose base64 decoder
 * takes 3-5 ms a megabyte against Uint8Array.fromBase64's 0.2-0.4 ms; then a bytes field
 * holding a marker's bytes gets the string's bytes, and a string field the string.
 */
function eventFromJson(json: JsonObject): HistoryEvent {
  const long: { marker: string; text: string; restore(): void }[] = [];
  const visit = (o: Record<string, unknown>, depth: number) => {
    if (depth > 32) return;
    for (const k in o) {
      const v = o[k];
      if (typeof v === "string") {
        if (v.length < LARGE_BASE64) continue;
        const marker = toBase64(crypto.getRandomValues(new Uint8Array(18)));
        o[k] = marker;
        long.push({ marker, text: v, restore: () => void (o[k] = v) });
      } else if (typeof v === "object" && v !== null) {
        visit(v as Record<string, unknown>, depth + 1);
      }
    }
  };
  visit(json, 0);
  let event: HistoryEvent;
  try {
    event = fromJson(HistoryEventSchema, json, { ignoreUnknownFields: true });
  } finally {
    for (const l of long) l.restore();
  }
  if (long.length > 0) putLong(event.attributes.value, new Map(long.map((l) => [l.marker, l.text])));
  return event;
}

/** base64 this long or longer is decoded by eventFromJson itself: LARGE_BYTES' worth. */
const LARGE_BASE64 = Math.ceil(LARGE_BYTES / 3) * 4;

/** Puts each marker's text where fromJson read the marker: decoded in a bytes field, as it is in a string field. */
function putLong(value: unknown, byMarker: Map<string, string>): void {
  const visit = (o: Record<string, unknown>, depth: number) => {
    if (depth > 32) return;
    for (const k in o) {
      const v = o[k];
      if (v instanceof Uint8Array) {
        const text = v.byteLength === 18 ? byMarker.get(toBase64(v)) : undefined;
        if (text !== undefined) o[k] = fromBase64(text);
      } else if (typeof v === "string") {
        const text = byMarker.get(v);
        if (text !== undefined) o[k] = text;
      } else if (typeof v === "object" && v !== null) {
        visit(v as Record<string, unknown>, depth + 1);
      }
    }
  };
  if (typeof value === "object" && value !== null) visit(value as Record<string, unknown>, 0);
}

/** Bytes from standard base64 (protobuf JSON's; protobuf-es also reads the URL alphabet and no padding). */
function fromBase64(text: string): Uint8Array {
  const native = (Uint8Array as unknown as { fromBase64?: (s: string) => Uint8Array }).fromBase64;
  if (native && !/[-_]/.test(text)) return native(text.length % 4 === 0 ? text : text + "=".repeat(4 - (text.length % 4)));
  const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Standard base64 with padding, as protobuf JSON writes bytes. */
function toBase64(bytes: Uint8Array): string {
  const native = (bytes as Uint8Array & { toBase64?: () => string }).toBase64;
  if (native) return native.call(bytes);
  let binary = "";
  for (let at = 0; at < bytes.length; at += 0x8000) binary += String.fromCharCode(...bytes.subarray(at, at + 0x8000));
  return btoa(binary);
}

/** A stored event row as the API's HistoryEvent. */
export function eventFromRow(row: Pick<EventRow, "eventId" | "version" | "eventTime" | "attributes">): HistoryEvent {
  const event = eventFromJson(row.attributes as JsonObject);
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
