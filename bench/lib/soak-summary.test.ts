import { describe, expect, test } from "bun:test";
import { formatMinutes, perMinute, rssGoal, rssVerdict, type RssSample, type SoakSample } from "./soak-summary";

/** A 300 s run sampled every 5 s: mb(t) gives the RSS at t. */
const run = (mb: (t: number) => number): RssSample[] => Array.from({ length: 61 }, (_, i) => ({ t: i * 5, rssMb: mb(i * 5) }));

describe("rssVerdict", () => {
  test("a flat series with noise is flat", () => {
    const v = rssVerdict(run((t) => 200 + ((t / 5) % 3) - 1), 300)!;
    expect(v.flat).toBe(true);
    expect(Math.abs(v.slopeMbPerMin)).toBeLessThan(0.5);
    expect(rssGoal("clusterA", v).verdict).toBe("PASS");
  });

  test("a leak of 5 MB a minute is not flat, though its last minute is within 10% of the first", () => {
    const v = rssVerdict(run((t) => 200 + (5 * t) / 60), 300)!;
    expect(Math.abs(v.driftRatio - 1)).toBeLessThan(0.1);
    expect(v.slopeMbPerMin).toBeCloseTo(5, 5);
    expect(v.flat).toBe(false);
    expect(rssGoal("clusterA", v).verdict).toBe("MISS");
  });

  test("a spike in the warm-up minute is not counted", () => {
    const v = rssVerdict(run((t) => (t < 60 ? 100 + t * 6 : 220)), 300)!;
    expect(v.warmupS).toBe(60);
    expect(v.firstMinuteMedianMb).toBe(220);
    expect(v.flat).toBe(true);
  });

  test("a step up late in the run is not flat", () => {
    expect(rssVerdict(run((t) => (t < 240 ? 200 : 240)), 300)!.flat).toBe(false);
  });

  test("a short run warms up for its first 20%; too few samples give N/A", () => {
    expect(rssVerdict(run(() => 200).slice(0, 7), 30)!.warmupS).toBe(6);
    expect(rssGoal("clusterB", rssVerdict([{ t: 0, rssMb: 1 }, { t: 30, rssMb: 1 }], 30)).verdict).toBe("N/A");
  });
});

describe("perMinute", () => {
  const samples: SoakSample[] = Array.from({ length: 25 }, (_, i) => ({
    t: i * 5 + (i === 24 ? 0.2 : 0), aRssMb: i < 12 ? 100 : 150, aPeakMb: 160, bRssMb: 90, bPeakMb: 95, aAckedOps: i * 5 * 150, bEvents: i * 5 * 140,
  }));

  test("medians and rates per minute, a reading at the run's end in the last minute", () => {
    const rows = perMinute(samples, 120);
    expect(rows.map((r) => [r.minute, r.aRssMb, r.bRssMb])).toEqual([[1, 100, 90], [2, 150, 90]]);
    expect(rows[0]!.aOpsPerSec).toBeCloseTo(150, 5);
    expect(rows[1]!.bEventsPerSec).toBeCloseTo((120 * 140 - 55 * 140) / 65.2, 5);
    expect(formatMinutes(rows).split("\n")[2]).toMatch(/^\s+2\s+150\s+90\s+\d+\s+\d+$/);
  });
});
