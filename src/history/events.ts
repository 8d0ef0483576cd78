import { create, fromJson, toJson, type JsonObject } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  EventType,
  HistoryEventSchema,
  type HistoryEvent,
  type Payloads,
} from "../gen/tern/common/v1/common_pb";
import type { historyEvents } from "../persistence/schema";
import type { NewEvent } from "./execution-store";

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
  const large = standAside(attributes.value, (v): v is Uint8Array => v instanceof Uint8Array && v.byteLength >= LARGE_BYTES, (marker) => marker);
  const json = whileAside(large, () => toJson(HistoryEventSchema, create(HistoryEventSchema, { attributes })) as Record<string, unknown>);
  if (large.length > 0) {
    // Each marker's bytes, as base64, where toJson wrote the marker.
    const byMarker = new Map(large.map((l) => [l.marker, l.value]));
    eachLeaf(json, (o, k, v) => {
      const bytes = typeof v === "string" ? byMarker.get(v) : undefined;
      if (bytes) o[k] = toBase64(bytes);
    });
  }
  return json;
}

/**
 * Bytes fields this long or longer are rendered to base64 here rather than by protobuf-es, which
 * builds the string a character at a time: 20-45 ms for a megabyte on the event loop, where
 * Uint8Array's toBase64 takes under a millisecond (btoa, where there is none, about 3 ms).
 */
const LARGE_BYTES = 4096;

/** base64 this long or longer is decoded by eventFromJson itself: LARGE_BYTES' worth. */
const LARGE_BASE64 = Math.ceil(LARGE_BYTES / 3) * 4;

/**
 * A HistoryEvent from its stored attributes JSON. Long strings (base64 of 4 KiB or more, or
 * long text) stand aside for markers while protobuf-es reads the rest, whose base64 decoder
 * takes 3-5 ms a megabyte against Uint8Array.fromBase64's 0.2-0.4 ms; then a bytes field
 * holding a marker's bytes gets the string's bytes, and a string field the string.
 */
function eventFromJson(json: JsonObject): HistoryEvent {
  const long = standAside(json, (v): v is string => typeof v === "string" && v.length >= LARGE_BASE64, (marker) => toBase64(marker));
  const event = whileAside(long, () => fromJson(HistoryEventSchema, json, { ignoreUnknownFields: true }));
  if (long.length > 0) {
    const byMarker = new Map(long.map((l) => [l.marker, l.value]));
    eachLeaf(event.attributes.value, (o, k, v) => {
      if (v instanceof Uint8Array) {
        const text = v.byteLength === MARKER_BYTES ? byMarker.get(toBase64(v)) : undefined;
        if (text !== undefined) o[k] = fromBase64(text);
      } else if (typeof v === "string") {
        const text = byMarker.get(v);
        if (text !== undefined) o[k] = text;
      }
    });
  }
  return event;
}

/** A marker's size: random bytes enough that no caller's value can be taken for one. */
const MARKER_BYTES = 18;

/** A field stood aside behind a marker (its base64) while protobuf-es works on the rest. */
interface StoodAside<T> {
  marker: string;
  value: T;
  restore(): void;
}

/**
 * Stands each leaf under root that pick takes aside: the field holds stand(marker) until
 * restore(), marker being MARKER_BYTES random bytes of its own.
 */
function standAside<T>(root: unknown, pick: (v: unknown) => v is T, stand: (marker: Uint8Array) => unknown): StoodAside<T>[] {
  const aside: StoodAside<T>[] = [];
  eachLeaf(root, (o, k, v) => {
    if (!pick(v)) return;
    const marker = crypto.getRandomValues(new Uint8Array(MARKER_BYTES));
    o[k] = stand(marker);
    aside.push({ marker: toBase64(marker), value: v, restore: () => void (o[k] = v) });
  });
  return aside;
}

/** fn's result, the fields stood aside put back whatever it does. */
function whileAside<R>(aside: StoodAside<unknown>[], fn: () => R): R {
  try {
    return fn();
  } finally {
    for (const a of aside) a.restore();
  }
}

/**
 * Calls leaf for each field under root that is no object or array (a Uint8Array is a leaf), down
 * to depth 32. for...in, not Object.entries: this runs for every event, and allocates nothing.
 */
function eachLeaf(root: unknown, leaf: (o: Record<string, unknown>, k: string, v: unknown) => void, depth = 0): void {
  if (typeof root !== "object" || root === null || depth > 32) return;
  const o = root as Record<string, unknown>;
  for (const k in o) {
    const v = o[k];
    if (typeof v === "object" && v !== null && !(v instanceof Uint8Array)) eachLeaf(v, leaf, depth + 1);
    else leaf(o, k, v);
  }
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

/** Standard base64 with padding, as protobuf JSON writes bytes; native where the runtime has it. */
export function toBase64(bytes: Uint8Array): string {
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

/** The event a signal writes. */
export function signalEvent(name: string, input: Payloads | undefined, identity?: string, requestId?: string): NewEvent {
  return {
    attributes: {
      case: "workflowExecutionSignaledEventAttributes",
      value: { signalName: name, input, identity: identity ?? "", requestId: requestId ?? "" } as never,
    },
  };
}
