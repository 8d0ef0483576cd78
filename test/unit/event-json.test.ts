import { describe, expect, test } from "bun:test";
import { create, toJson } from "@bufbuild/protobuf";
import { HistoryEventSchema, PayloadsSchema } from "../../src/gen/tern/common/v1/common_pb";
import { attributesToJson, type EventAttributes } from "../../src/history/events";

/** n bytes of noise (base64 of every byte value, so an encoder's table is checked whole). */
function noise(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  for (let at = 0; at < n; at += 65_536) crypto.getRandomValues(bytes.subarray(at, Math.min(n, at + 65_536)));
  return bytes;
}

/** A signal whose payloads hold the given data and metadata sizes. */
function signal(...sizes: [data: number, metadata: number][]): EventAttributes {
  const input = create(PayloadsSchema, { payloads: sizes.map(([d, m]) => ({ metadata: { encoding: noise(m), small: noise(3) }, data: noise(d) })) });
  return { case: "workflowExecutionSignaledEventAttributes", value: { signalName: "s", input } as never };
}

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
  });

  test("without Uint8Array's toBase64 (Node 20), through btoa, the same", () => {
    const native = Object.getOwnPropertyDescriptor(Uint8Array.prototype, "toBase64");
    Reflect.deleteProperty(Uint8Array.prototype, "toBase64");
    try {
      expect("toBase64" in new Uint8Array(1)).toBe(false);
      const attributes = signal([70_001, 4096], [65_536, 0]);
      expect(attributesToJson(attributes)).toEqual(byProtobufEs(attributes) as never);
    } finally {
      if (native) Object.defineProperty(Uint8Array.prototype, "toBase64", native);
    }
  });
});
