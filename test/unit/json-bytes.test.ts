import { describe, expect, test } from "bun:test";
import { fromJson, toJson } from "@bufbuild/protobuf";
import { base64Decode, base64Encode } from "@bufbuild/protobuf/wire";
import { PayloadSchema } from "../../src/gen/tern/common/v1/common_pb";
import { mendsMissing } from "../../src/persistence/driver-mends";

/** n bytes of noise (every byte value, so an encoder's table is checked whole). */
function noise(n: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(n);
  for (let at = 0; at < n; at += 65_536) crypto.getRandomValues(bytes.subarray(at, Math.min(n, at + 65_536)));
  return bytes;
}

// Connect's JSON codec writes and reads every bytes field through protobuf-es's base64, which
// builds a string a character at a time: a history page of large payloads held the event loop
// for seconds. Mend 13 (scripts/patch-dependencies.mjs) hands plain base64 to the runtime.
describe("bytes in protobuf JSON (Connect's JSON codec)", () => {
  test("TheInstalledProtobufEsUsesTheRuntimesBase64", () => {
    expect(mendsMissing("@bufbuild/protobuf")).toBeUndefined();
  });

  test("WritesStandardBase64WithPadding, every tail and a megabyte", () => {
    for (const n of [0, 1, 2, 3, 4, 5, 63, 64, 65, 1 << 20]) {
      const data = noise(n);
      const json = toJson(PayloadSchema, { $typeName: "tern.common.v1.Payload", metadata: { e: data }, data }) as { data?: string; metadata: { e: string } };
      const expected = Buffer.from(data).toString("base64");
      expect(json.metadata.e).toBe(expected);
      if (n > 0) expect(json.data).toBe(expected);
      expect(fromJson(PayloadSchema, json).data).toEqual(data);
    }
  });

  test("EncodesEachOfProtobufEsAlphabets", () => {
    const data = noise(1000);
    expect(base64Encode(data, "std")).toBe(Buffer.from(data).toString("base64"));
    expect(base64Encode(data, "std_raw")).toBe(Buffer.from(data).toString("base64").replace(/=+$/, ""));
    expect(base64Encode(data, "url")).toBe(Buffer.from(data).toString("base64url"));
  });

  test("ReadsWhatProtobufJsonAllows: the URL alphabet, no padding, white space, inner padding", () => {
    const data = noise(1001);
    const std = Buffer.from(data).toString("base64");
    expect(base64Decode(std)).toEqual(data);
    expect(base64Decode(Buffer.from(data).toString("base64url"))).toEqual(data);
    expect(base64Decode(std.replace(/=+$/, ""))).toEqual(data);
    expect(base64Decode(std.replace(/(.{76})/g, "$1\r\n"))).toEqual(data);
    expect(base64Decode("QQ==QkM=")).toEqual(new Uint8Array([0x41, 0x42, 0x43]));
    expect(fromJson(PayloadSchema, { data: Buffer.from(data).toString("base64url") }).data).toEqual(data);
  });

  test("RefusesWhatIsNoBase64", () => {
    expect(() => base64Decode("QQ==!")).toThrow("invalid base64 string");
    expect(() => fromJson(PayloadSchema, { data: "not base64?" })).toThrow("cannot decode field tern.common.v1.Payload.data from JSON");
  });
});
