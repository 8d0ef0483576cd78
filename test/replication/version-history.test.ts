import { describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { HistoryEventSchema, type HistoryEvent } from "../../src/gen/tern/common/v1/common_pb";
import { applyEvents, initialRunState } from "../../replication/run-state";
import { firstDivergence, versionAt } from "../../replication/version-history";

const vh = (...items: [number, number][]) => items.map(([eventId, version]) => ({ eventId, version }));

describe("version histories (DESIGN.md section 4)", () => {
  test.each([
    ["same", vh([5, 1]), vh([5, 1]), undefined],
    ["prefix (duplicate or append)", vh([3, 1]), vh([5, 1], [8, 2]), undefined],
    ["longer local", vh([5, 1], [8, 2]), vh([5, 1]), undefined],
    ["empty local", [], vh([4, 1]), undefined],
    ["diverges after a forced failover", vh([5, 1], [8, 2]), vh([6, 1], [9, 12]), 6],
    ["diverges from the first event", vh([3, 1]), vh([3, 2]), 1],
    ["switch point differs", vh([2, 1], [6, 2]), vh([4, 1], [6, 2]), 3],
  ] as const)("firstDivergence: %s", (_name, local, incoming, expected) => {
    expect(firstDivergence([...local], [...incoming])).toBe(expected);
  });

  test("versionAt reads the step covering an event", () => {
    const h = vh([5, 1], [8, 2]);
    expect([versionAt(h, 1), versionAt(h, 5), versionAt(h, 6), versionAt(h, 8), versionAt(h, 9)]).toEqual([1, 1, 2, 2, undefined]);
  });
});

const at = new Date("2030-01-01T00:00:00Z");
function event(eventId: number, version: number, attributes: HistoryEvent["attributes"]): HistoryEvent {
  return create(HistoryEventSchema, { eventId: BigInt(eventId), version: BigInt(version), eventTime: timestampFromDate(at), attributes });
}

describe("run state from replicated events", () => {
  test("a started, signaled, cancel-requested and terminated run", () => {
    const events = [
      event(1, 1, { case: "workflowExecutionStartedEventAttributes", value: { workflowType: "T", taskQueue: "q", executionTimeoutMs: 500n, requestId: "r1" } as never }),
      event(2, 1, { case: "workflowExecutionSignaledEventAttributes", value: { signalName: "s", requestId: "r2" } as never }),
      event(3, 2, { case: "workflowExecutionCancelRequestedEventAttributes", value: { reason: "x", requestId: "" } as never }),
      event(4, 2, { case: "workflowExecutionTerminatedEventAttributes", value: { reason: "y" } as never }),
    ];
    const { state, requestIds } = applyEvents(initialRunState(events[0]!), events);
    expect(state).toMatchObject({
      workflowType: "T", taskQueue: "q", executionTimeoutMs: 500, startTime: at, status: "TERMINATED", closeTime: at,
      cancelRequested: true, nextEventId: 5, lastWriteVersion: 2, versionHistory: vh([2, 1], [4, 2]),
    });
    expect(requestIds).toEqual([{ requestId: "r1", eventId: 1 }, { requestId: "r2", eventId: 2 }]);
  });

  test("refuses events that do not follow the run's last event", () => {
    const started = event(1, 1, { case: "workflowExecutionStartedEventAttributes", value: { workflowType: "T", taskQueue: "q" } as never });
    const { state } = applyEvents(initialRunState(started), [started]);
    expect(() => applyEvents(state, [event(3, 1, { case: "markerRecordedEventAttributes", value: { markerName: "m" } as never })])).toThrow("does not follow");
  });
});
