import { describe, expect, test } from "bun:test";
import { happensAfter } from "../../replication/applier";

const run = (runId: string, lastWriteVersion: number, startMs: number) => ({ runId, lastWriteVersion, startTime: new Date(startMs) });

describe("which of two open runs of a workflow happens after the other (applier.ts)", () => {
  test.each([
    { why: "a higher version wins, whenever it started", a: run("r1", 2, 1_000), b: run("r2", 1, 2_000), want: true },
    { why: "a lower version loses, whenever it started", a: run("r2", 1, 2_000), b: run("r1", 2, 1_000), want: false },
    { why: "at one version, the later start wins (its cluster closed the other first)", a: run("r2", 1, 2_000), b: run("r1", 1, 1_000), want: true },
    { why: "at one version, the earlier start loses", a: run("r1", 1, 1_000), b: run("r2", 1, 2_000), want: false },
    { why: "at one version and start time, the run id decides", a: run("r2", 1, 1_000), b: run("r1", 1, 1_000), want: true },
    { why: "and the other way round", a: run("r1", 1, 1_000), b: run("r2", 1, 1_000), want: false },
  ])("$why", ({ a, b, want }) => {
    expect(happensAfter(a, b)).toBe(want);
  });
});
