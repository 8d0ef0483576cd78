import { describe, expect, test } from "bun:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { GetWorkflowExecutionHistoryResponseSchema } from "../../src/gen/tern/workflow/v1/service_pb";
import { mendsMissing } from "../../src/persistence/driver-mends";

/** n bytes of a fixed pattern (the same in every run). */
function pattern(n: number, seed: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(n);
  for (let i = 0; i < n; i++) bytes[i] = (i * 7 + seed * 13) % 251;
  return bytes;
}

const meta = (key: string, value: Uint8Array): Record<string, Uint8Array> => ({ [key]: value });

/** A history page: signals whose payloads straddle the size mend 14 hands on, fields after each. */
function page(sizes: number[]) {
  return create(GetWorkflowExecutionHistoryResponseSchema, {
    runId: "run",
    nextPageToken: pattern(40, 1),
    history: {
      events: sizes.map((n, i) => ({
        eventId: BigInt(i + 1),
        version: 7n,
        attributes: {
          case: "workflowExecutionSignaledEventAttributes" as const,
          value: {
            signalName: `s${i}`,
            identity: "after the input",
            requestId: `r${i}`,
            input: { payloads: [{ metadata: meta("encoding", new TextEncoder().encode("binary/plain")), data: pattern(n, i) }, { metadata: meta("e", pattern(2, i)), data: pattern(3, i) }] },
          },
        },
      })),
    },
  });
}

const SIZES = [0, 100, 16_300, 16_384, 16_400, 70_000, 1 << 20, 5];

async function sha256(bytes: Uint8Array): Promise<string> {
  return Buffer.from(await crypto.subtle.digest("SHA-256", new Uint8Array(bytes))).toString("hex");
}

// Mend 14 (scripts/patch-dependencies.mjs): protobuf-es's BinaryWriter copied a nested
// message's bytes into one array at each level around it, so a payload in a history page's
// answer was copied six times.
describe("protobuf-es binary writer (mend 14)", () => {
  test("TheInstalledProtobufEsCarriesTheMend", () => {
    expect(mendsMissing("@bufbuild/protobuf")).toBeUndefined();
  });

  test("WritesTheSameBytesAsTheUnmendedWriter: payloads about the threshold, fields after them", async () => {
    const bytes = toBinary(GetWorkflowExecutionHistoryResponseSchema, page(SIZES));
    // Written by protobuf-es 2.13.0 without the mend.
    expect({ length: bytes.length, sha256: await sha256(bytes) }).toEqual({
      length: GOLDEN_LENGTH,
      sha256: GOLDEN_SHA256,
    });
    const back = fromBinary(GetWorkflowExecutionHistoryResponseSchema, bytes);
    expect(back).toEqual(page(SIZES));
  });

  test("CopiesALargePayloadOnce, not once for each message around it", () => {
    const msg = page([1 << 20]);
    const set = Uint8Array.prototype.set;
    let copied = 0;
    Uint8Array.prototype.set = function (this: Uint8Array, source: ArrayLike<number>, offset?: number) {
      copied += source.length;
      return set.call(this, source, offset);
    } as typeof set;
    try {
      toBinary(GetWorkflowExecutionHistoryResponseSchema, msg);
    } finally {
      Uint8Array.prototype.set = set;
    }
    // Unmended: about 6 MiB (five joins and the finish).
    expect(copied).toBeGreaterThanOrEqual(1 << 20);
    expect(copied).toBeLessThan(1.1 * (1 << 20));
  });
});

const GOLDEN_LENGTH = 1_168_511;
const GOLDEN_SHA256 = "937b9bcecd153e17dd81eb4ec181792d933ec89aca3b7eeee376a04fa14e3c25";
