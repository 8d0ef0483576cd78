import { describe, expect, test } from "bun:test";
import { rssVerdict, type RssSample } from "./soak-summary";

/** A 300 s run sampled every 5 s: mb(t) gives the RSS at t. */
const run = (mb: (t: number) => number): RssSample[] => Array.from({ length: 61 }, (_, i) => ({ t: i * 5, rssMb: mb(i * 5) }));

describe("rssVerdict", () => {
  test("a flat series with noise is flat", () => {
    const v = rssVerdict(run((t) => 200 + ((t / 5) % 3) - 1), 300);
    expect(v.flat).toBe(true);
    expect(Math.abs(v.slopeMbPerMin)).toBeLessThan(0.5);
  });

  test("a leak of 5 MB a minute is not flat", () => {
    const v = rssVerdict(run((t) => 200 + (5 * t) / 60), 300);
    expect(v.flat).toBe(false);
    expect(v.slopeMbPerMin).toBeCloseTo(5, 5);
  });

  test("growth during the warm-up minute is not counted", () => {
    const v = rssVerdict(run((t) => (t < 60 ? 100 + t * 2 : 220)), 300);
    expect(v.warmupS).toBe(60);
    expect(v.flat).toBe(true);
    expect(v.lastMinuteMedianMb).toBe(220);
  });

  test("a step up late in the run is not flat", () => {
    expect(rssVerdict(run((t) => (t < 240 ? 200 : 240)), 300).flat).toBe(false);
  });
});
