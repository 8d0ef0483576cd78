import { describe, expect, test } from "bun:test";
import { createOutboxMarks } from "../../replication/outbox";

describe("outbox marks: the highest task id known committed per shard", () => {
  test("AShardWithNoTaskYetIsKnownAtZero, so a caught-up poll need not read it", () => {
    const marks = createOutboxMarks();
    expect(marks.latest(1)).toBeUndefined();
    marks.advance(1, 0);
    expect(marks.latest(1)).toBe(0);
  });

  test("MarksOnlyMoveForward", () => {
    const marks = createOutboxMarks();
    marks.advance(2, 7);
    marks.advance(2, 3);
    marks.advance(2, 0);
    expect(marks.latest(2)).toBe(7);
    marks.advance(2, 9);
    expect(marks.latest(2)).toBe(9);
  });

  test("AWatchTakesTheShardsMovedSinceItsLastTake, not a mark that stayed, and nothing once closed", () => {
    const marks = createOutboxMarks();
    marks.advance(1, 5);
    const watch = marks.watch();
    expect(watch.take()).toEqual([]);
    marks.advance(1, 6);
    marks.advance(3, 0);
    marks.advance(1, 7);
    marks.advance(2, 0);
    expect(watch.take().sort()).toEqual([1, 2, 3]);
    expect(watch.take()).toEqual([]);
    marks.advance(1, 4); // below its mark: not a move
    expect(watch.take()).toEqual([]);
    const other = marks.watch();
    watch.close();
    marks.advance(4, 1);
    expect(watch.take()).toEqual([]);
    expect(other.take()).toEqual([4]);
  });

  test("TheSummaryCountsTheMarkedShardsAndSumsTheirMarks, a mark that stays counted once", () => {
    const marks = createOutboxMarks();
    expect(marks.summary()).toEqual({ shards: 0, total: 0 });
    marks.advance(1, 0);
    marks.advance(2, 5);
    marks.advance(2, 3); // below its mark: no change
    marks.advance(2, 9);
    marks.advance(3, 4);
    expect(marks.summary()).toEqual({ shards: 3, total: 13 });
  });
});
