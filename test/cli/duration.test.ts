import { describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { formatDuration, formatMillis, parseDuration, parseDurationNanos } from "../../src/cli/duration";
import { UsageError } from "../../src/cli/errors";

describe("parseDuration", () => {
  test.each([
    ["72h", 259_200n, 0],
    ["30s", 30n, 0],
    ["1m30s", 90n, 0],
    ["500ms", 0n, 500_000_000],
    ["3d", 259_200n, 0],
    ["1.5h", 5_400n, 0],
    ["1h0m5s", 3_605n, 0],
    ["2s250ms", 2n, 250_000_000],
    ["0", 0n, 0],
    ["0s", 0n, 0],
    ["10us", 0n, 10_000],
    ["7ns", 0n, 7],
  ])("%s", (text, seconds, nanos) => {
    const d = parseDuration(text);
    expect(d.seconds).toBe(seconds);
    expect(d.nanos).toBe(nanos);
  });

  test.each(["", "30", "h", "1x", "1h-", "-5s", "1.h", "5 s", "1h 30m", "abc"])("rejects %p", (text) => {
    expect(() => parseDuration(text, "retention")).toThrow(UsageError);
  });

  test("the error names the flag and the value on one line", () => {
    expect(() => parseDuration("5x", "retention")).toThrow('--retention: invalid duration "5x"');
    try {
      parseDuration("5x", "retention");
    } catch (e) {
      expect((e as Error).message).not.toContain("\n");
    }
  });

  test("a duration past google.protobuf.Duration's 10,000 years is a usage error, not an encoding failure", () => {
    expect(parseDuration("87660000h").seconds).toBe(315_576_000_000n);
    expect(() => parseDuration("87660001h", "retention")).toThrow('--retention: duration "87660001h" is over 10,000 years');
    expect(() => parseDuration("99999999999999999999h", "execution-timeout")).toThrow(UsageError);
  });

  test("fractions do not lose precision", () => {
    expect(parseDurationNanos("0.001s")).toBe(1_000_000n);
    expect(parseDurationNanos("1.000000001s")).toBe(1_000_000_001n);
  });
});

describe("formatDuration", () => {
  test("renders as typed", () => {
    expect(formatDuration(parseDuration("72h"))).toBe("72h");
    expect(formatDuration(parseDuration("3d"))).toBe("72h");
    expect(formatDuration(parseDuration("1m30s"))).toBe("1m30s");
    expect(formatDuration(parseDuration("500ms"))).toBe("500ms");
    expect(formatDuration(create(DurationSchema, {}))).toBe("0s");
    expect(formatDuration(undefined)).toBe("");
  });
  test("formatMillis", () => {
    expect(formatMillis(30_000n)).toBe("30s");
    expect(formatMillis(1_500)).toBe("1s500ms");
    expect(formatMillis(0n)).toBe("none");
  });
});
