import { describe, expect, test } from "bun:test";
import { create, fromJson, toJson, type JsonObject } from "@bufbuild/protobuf";
import { HistoryEventSchema, PayloadsSchema, WorkflowExecutionSignaledEventAttributesSchema } from "../../src/gen/tern/common/v1/common_pb";
import { attributesToJson, eventFromRow, type EventAttributes } from "../../src/history/events";

/** n bytes of noise (base64 of every byte value, so an encoder's table is checked whole). */
function noise(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  for (let at = 0; at < n; at += 65_536) crypto.getRandomValues(bytes.subarray(at, Math.min(n, at + 65_536)));
  return bytes;
}

/** A signal whose payloads hold the given data and metadata sizes. */
function signal(...sizes: [data: number, metadata: number][]): EventAttributes {
  const input = create(PayloadsSchema, { payloads: sizes.map(([d, m]) => ({ metadata: { encoding: noise(m), small: noise(3) }, data: noise(d) })) });
  return { case: "workflowExecutionSignaledEventAttributes", value: create(WorkflowExecutionSignaledEventAttributesSchema, { signalName: "s".repeat(sizes.length * 3000), input }) };
}

/** A stored row of attributes, as the database gives it back (JSON text parsed). */
const row = (attributes: EventAttributes) => ({ eventId: 2, version: 1, eventTime: new Date(0), attributes: JSON.parse(JSON.stringify(attributesToJson(attributes))) });
const readByProtobufEs = (json: unknown) => fromJson(HistoryEventSchema, json as JsonObject, { ignoreUnknownFields: true }).attributes;

const byProtobufEs = (attributes: EventAttributes) => toJson(HistoryEventSchema, create(HistoryEventSchema, { attributes }));

describe("attributesToJson", () => {
  // Sizes around the point where tern encodes bytes itself, and each base64 tail (0, 1, 2 padding characters).
  const cases: [string, [number, number][]][] = [
    ["small payloads only", [[10, 5], [0, 0]]],
    ["data at the threshold and either side", [[4095, 1], [4096, 2], [4097, 3]]],
    ["a megabyte of data and large metadata", [[1 << 20, 5000], [1, 8192]]],
  ];
  test.each(cases)("%s: the same JSON as protobuf-es writes, the message left as it was", (_, sizes) => {
    const attributes = signal(...sizes);
    const before = structuredClone(attributes);
    expect(attributesToJson(attributes)).toEqual(byProtobufEs(attributes) as never);
    expect(attributes).toEqual(before);
    // Read back: the attributes written, and the row's JSON as it was.
    const stored = row(attributes);
    const json = structuredClone(stored.attributes);
    expect(eventFromRow(stored).attributes).toEqual(readByProtobufEs(json));
    expect(eventFromRow(stored).attributes).toEqual(attributes);
    expect(stored.attributes).toEqual(json);
  });

  test("without Uint8Array's toBase64 and fromBase64 (Node 20), through btoa and atob, the same", () => {
    const toBase64 = Object.getOwnPropertyDescriptor(Uint8Array.prototype, "toBase64");
    const fromBase64 = Object.getOwnPropertyDescriptor(Uint8Array, "fromBase64");
    Reflect.deleteProperty(Uint8Array.prototype, "toBase64");
    Reflect.deleteProperty(Uint8Array, "fromBase64");
    try {
      expect("toBase64" in new Uint8Array(1) || "fromBase64" in Uint8Array).toBe(false);
      const attributes = signal([70_001, 4096], [65_536, 0]);
      expect(attributesToJson(attributes)).toEqual(byProtobufEs(attributes) as never);
      expect(eventFromRow(row(attributes)).attributes).toEqual(attributes);
    } finally {
      if (toBase64) Object.defineProperty(Uint8Array.prototype, "toBase64", toBase64);
      if (fromBase64) Object.defineProperty(Uint8Array, "fromBase64", fromBase64);
    }
  });
});
