import { describe, expect, test } from "bun:test";
import { backlogDrain, catchUpFrom, lagsByKey, lagsOfWrittenIn, type ApplyStamp } from "./apply-stamps";

const s = (eventTimeMs: number, appliedAtMs: number): ApplyStamp => ({ eventTimeMs, appliedAtMs });

describe("catchUpFrom", () => {
  test("ends at the last apply that was still 1 s or more behind", () => {
    // Resumed at t=10000 with a backlog written from t=0; fresh events from t=12000 arrive fast.
    const stamps = [s(0, 9000), s(0, 10_100), s(5000, 10_500), s(11_500, 12_000), s(12_000, 12_010), s(12_100, 12_105)];
    const c = catchUpFrom(stamps, 10_000);
    expect(c.seconds).toBeCloseTo(0.5, 6); // s(5000, 10500) is the last apply 1 s or more behind
    expect(c.events).toBe(2);
  });
  test("null while the newest applies are still slow", () => {
    expect(catchUpFrom([s(0, 10_100), s(1, 10_200)], 10_000).seconds).toBeNull();
  });
  test("null while nothing was applied since the resume", () => {
    expect(catchUpFrom([s(0, 9000)], 10_000).seconds).toBeNull();
  });
  test("zero when nothing was behind", () => {
    expect(catchUpFrom([s(10_000, 10_010)], 10_000)).toEqual({ seconds: 0, eventsPerSec: Number.NaN, events: 0 });
  });
  test("rate counts the applies up to the end", () => {
    const stamps = [s(0, 10_250), s(0, 10_500), s(0, 11_000), s(11_000, 11_001)];
    expect(catchUpFrom(stamps, 10_000)).toEqual({ seconds: 1, events: 3, eventsPerSec: 3 });
  });
});

test("lagsOfWrittenIn selects by source write time", () => {
  expect(lagsOfWrittenIn([s(0, 5), s(10, 30), s(20, 21)], 10, 20)).toEqual([20]);
});

describe("backlogDrain", () => {
  test("ends at the last apply of an event written before the resume", () => {
    const stamps = [s(0, 9000), s(100, 10_200), s(10_100, 10_300), s(9000, 10_400), s(10_450, 10_500)];
    expect(backlogDrain(stamps, 10_000)).toEqual({ seconds: 0.4, events: 3, eventsPerSec: 7.5 });
  });
  test("null before any backlog event is applied", () => {
    expect(backlogDrain([s(10_100, 10_200)], 10_000)).toBeNull();
  });
});

describe("lagsByKey", () => {
  test("applied minus committed, per key found on both sides", () => {
    const committed = [{ k: "r1/1", ms: 1000 }, { k: "r1/2", ms: "1002.5" }, { k: "r2/1", ms: null }, { k: "r3/1", ms: 1010 }];
    const applied = [{ k: "r1/2", ms: 1006 }, { k: "r1/1", ms: 1003 }, { k: "r2/1", ms: 1020 }, { k: "r4/1", ms: 1030 }];
    // r2/1 has no commit timestamp (committed before it was kept), r3/1 is not applied yet, r4/1 was not committed in the window.
    expect(lagsByKey(committed, applied)).toEqual([3.5, 3]);
  });
});
