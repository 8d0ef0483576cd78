import { describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { HistoryEventSchema } from "../../src/gen/tern/common/v1/common_pb";
import type { IncomingTask } from "../../replication/apply-errors";
import { mergeRunTasks } from "../../replication/task-merge";

/** A task of run `run` with events first..next-1 at `version`, on a branch described by `history`. */
function task(run: string, first: number, next: number, version: number, history = [{ eventId: next - 1, version }]): IncomingTask {
  return {
    namespaceId: "ns", workflowId: "wf", runId: run, firstEventId: first, nextEventId: next, versionHistory: history,
    events: Array.from({ length: next - first }, (_, i) => create(HistoryEventSchema, { eventId: BigInt(first + i), version: BigInt(version) })),
  };
}
const shape = (ts: IncomingTask[]) => ts.map((t) => `${t.runId}:${t.firstEventId}-${t.nextEventId}:${t.events.length}`);

describe("mergeRunTasks", () => {
  test("adjacent tasks of one run on one branch become one task with every event and the last history", () => {
    const merged = mergeRunTasks([task("r", 1, 3, 1), task("r", 3, 4, 1), task("r", 4, 6, 1)]);
    expect(shape(merged)).toEqual(["r:1-6:5"]);
    expect(merged[0]!.versionHistory).toEqual([{ eventId: 5, version: 1 }]);
  });

  test("a later failover version continues the branch: still merged", () => {
    const merged = mergeRunTasks([task("r", 1, 3, 1), task("r", 3, 4, 101, [{ eventId: 2, version: 1 }, { eventId: 3, version: 101 }])]);
    expect(shape(merged)).toEqual(["r:1-4:3"]);
  });

  test.each([
    ["another run between", [task("r", 1, 3, 1), task("s", 1, 2, 1), task("r", 3, 4, 1)], ["r:1-3:2", "s:1-2:1", "r:3-4:1"]],
    ["a gap", [task("r", 1, 3, 1), task("r", 4, 5, 1)], ["r:1-3:2", "r:4-5:1"]],
    ["a task missing events", [{ ...task("r", 1, 3, 1), events: task("r", 1, 2, 1).events }, task("r", 3, 4, 1)], ["r:1-3:1", "r:3-4:1"]],
    // The later task's branch has event 2 at version 101: the earlier one's event 2 (version 1) lost a conflict.
    ["a branch switch", [task("r", 1, 3, 1), task("r", 3, 4, 101, [{ eventId: 1, version: 1 }, { eventId: 3, version: 101 }])], ["r:1-3:2", "r:3-4:1"]],
  ])("kept apart across %s", (_, tasks, expected) => {
    expect(shape(mergeRunTasks(tasks as IncomingTask[]))).toEqual(expected as string[]);
  });
});
