import { describe, expect, test } from "bun:test";
import { median, percentile, summarize } from "./percentiles";

const oneToHundred = Array.from({ length: 100 }, (_, i) => i + 1);

describe("percentile (nearest rank)", () => {
  const cases: Array<[string, number[], number, number]> = [
    ["single sample is every percentile", [7], 99, 7],
    ["p0 is the minimum", [1, 2, 3], 0, 1],
    ["p100 is the maximum", [1, 2, 3], 100, 3],
    ["p50 of an odd count is the middle", [1, 2, 3], 50, 2],
    ["p50 of an even count is the lower middle", [1, 2, 3, 4], 50, 2],
    ["p99 of 1..100 is 99", oneToHundred, 99, 99],
    ["p50 of 1..100 is 50", oneToHundred, 50, 50],
    ["p99 of 10 samples is the largest", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99, 10],
    ["p90 of 10 samples is the 9th", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90, 9],
  ];
  for (const [name, sorted, p, want] of cases) {
    test(name, () => expect(percentile(sorted, p)).toBe(want));
  }

  test("no samples gives NaN", () => expect(percentile([], 50)).toBeNaN());
  test("rejects a percentile outside 0..100", () => {
    expect(() => percentile([1], 101)).toThrow(RangeError);
    expect(() => percentile([1], -1)).toThrow(RangeError);
  });
});

describe("summarize", () => {
  test("sorts numerically, not as strings", () => {
    const s = summarize([10, 9, 100, 1, 2]);
    expect(s).toEqual({ count: 5, min: 1, mean: 24.4, p50: 9, p99: 100, max: 100 });
  });

  test("leaves the input untouched", () => {
    const samples = [3, 1, 2];
    summarize(samples);
    expect(samples).toEqual([3, 1, 2]);
  });

  test("empty input", () => {
    const s = summarize([]);
    expect(s.count).toBe(0);
    expect(s.p50).toBeNaN();
    expect(s.p99).toBeNaN();
  });
});

test("median: middle value, mean of the two middle ones for an even count, NaN for none", () => {
  expect(median([3, 1, 2])).toBe(2);
  expect(median([4, 1, 3, 2])).toBe(2.5);
  expect(median([])).toBeNaN();
});
