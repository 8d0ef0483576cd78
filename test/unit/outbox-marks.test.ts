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
});
