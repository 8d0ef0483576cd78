import { describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  EventType,
  HistoryEventSchema,
  VersionHistorySchema,
  WorkflowExecutionStatus,
} from "../../src/gen/tern/common/v1/common_pb";
import { eventDetails, eventTypeLabel, formatVersionHistory, statusLabel } from "../../src/cli/format-workflow";
import { createListJsonWriter, enumLabel, formatFixedRow, formatKeyValues, formatTable, formatTime, listJson, truncate } from "../../src/cli/output";
import { encodeJsonPayload } from "../../src/cli/payload";

describe("formatTable", () => {
  test("aligns columns to the widest cell, two spaces apart, no trailing spaces", () => {
    const out = formatTable(["NAME", "STATE"], [["orders", "Registered"], ["a", ""]]);
    expect(out).toBe("NAME    STATE\norders  Registered\na\n");
  });
  test("headers wider than cells set the width; newlines in cells are flattened", () => {
    expect(formatTable(["FAILOVER VERSION", "X"], [["1", "a\nb"]])).toBe("FAILOVER VERSION  X\n1                 a b\n");
  });
  test("an empty list prints only the header", () => {
    expect(formatTable(["A", "B"], [])).toBe("A  B\n");
  });
});

describe("createListJsonWriter", () => {
  test("writes listJson's text an item at a time", () => {
    const events = [1, 2, 3].map((id) => create(HistoryEventSchema, {
      eventId: BigInt(id), eventType: EventType.WORKFLOW_EXECUTION_SIGNALED,
      attributes: { case: "workflowExecutionSignaledEventAttributes", value: { signalName: "s\nt", input: { payloads: [encodeJsonPayload('{"a": [1, {"b": 2}]}')] } } },
    }));
    for (const n of [0, 1, 3]) {
      const chunks: string[] = [];
      const list = createListJsonWriter((t) => chunks.push(t), "events", HistoryEventSchema);
      for (const e of events.slice(0, n)) list.item(e);
      expect(chunks.length).toBe(n);
      list.end();
      expect(chunks.join("")).toBe(listJson("events", HistoryEventSchema, events.slice(0, n)));
    }
  });
});

describe("formatKeyValues", () => {
  test("aligns values and skips undefined ones", () => {
    expect(formatKeyValues([["Name", "orders"], ["Skipped", undefined], ["FailoverVersion", "2"]])).toBe(
      "Name:             orders\nFailoverVersion:  2\n",
    );
  });
  test("empty values leave no trailing spaces", () => {
    expect(formatKeyValues([["Description", ""]])).toBe("Description:\n");
  });
});

describe("small formatters", () => {
  test("formatFixedRow pads all but the last column", () => {
    expect(formatFixedRow(["1", "2", "x"], [3, 3])).toBe("1    2    x\n");
  });
  test("formatTime is ISO UTC, empty when unset", () => {
    expect(formatTime(timestampFromMs(Date.UTC(2024, 4, 1, 12, 0, 0, 5)))).toBe("2024-05-01T12:00:00.005Z");
    expect(formatTime(undefined)).toBe("");
  });
  test("enum labels read like the Temporal CLI", () => {
    expect(statusLabel(WorkflowExecutionStatus.TIMED_OUT)).toBe("TimedOut");
    expect(eventTypeLabel(EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED)).toBe("WorkflowExecutionCancelRequested");
    expect(enumLabel(WorkflowExecutionStatus, 99)).toBe("99");
  });
  test("truncate marks the cut", () => {
    expect(truncate("abcdef", 4)).toBe("abc…");
    expect(truncate("abc", 4)).toBe("abc");
  });
});

describe("workflow formatting", () => {
  test("version history reads as event ranges per version", () => {
    const vh = create(VersionHistorySchema, {
      items: [
        { eventId: 3n, version: 1n },
        { eventId: 4n, version: 2n },
        { eventId: 9n, version: 102n },
      ],
    });
    expect(formatVersionHistory(vh)).toBe("events 1-3 @ v1, events 4 @ v2, events 5-9 @ v102");
    expect(formatVersionHistory(undefined)).toBe("");
  });

  test("event details decode json/plain payloads", () => {
    const started = create(HistoryEventSchema, {
      eventId: 1n,
      eventType: EventType.WORKFLOW_EXECUTION_STARTED,
      attributes: {
        case: "workflowExecutionStartedEventAttributes",
        value: { workflowType: "Order", taskQueue: "q", input: { payloads: [encodeJsonPayload('{"id": 7}')] }, executionTimeoutMs: 30_000n },
      },
    });
    expect(eventDetails(started)).toBe('type=Order taskQueue=q input={"id":7} timeout=30s');
    const signaled = create(HistoryEventSchema, {
      attributes: { case: "workflowExecutionSignaledEventAttributes", value: { signalName: "go" } },
    });
    expect(eventDetails(signaled)).toBe("name=go");
  });
});

describe("columns hold names a terminal shows wider or narrower than their UTF-16 length", () => {
  test("CJK and emoji take two columns, a combining accent none: the next column still lines up", () => {
    const table = formatTable(["ID", "TYPE", "STATUS"], [["wf-😀", "Typ名前", "Running"], ["e\u0301x", "OrderFlow", "Running"], ["o-1", "T", "Running"]]);
    expect(table.split("\n")).toEqual([
      "ID     TYPE       STATUS",
      "wf-😀  Typ名前    Running",
      "e\u0301x     OrderFlow  Running",
      "o-1    T          Running",
      "",
    ]);
  });

  test("a tab or a carriage return in a cell is no cursor move: the next column still lines up", () => {
    const table = formatTable(["TYPE", "STATUS"], [["a\tb", "Running"], ["c\rd", "Running"], ["OrderFlow", "Running"]]);
    expect(table.split("\n")).toEqual(["TYPE       STATUS", "a b        Running", "c\\x0dd     Running", "OrderFlow  Running", ""]);
  });

  test("a follow row pads to the same columns", () => {
    expect(formatFixedRow(["名", "x"], [3])).toBe("名   x\n");
  });

  test("Hangul is two columns a character too", () => {
    expect(formatFixedRow(["한국", "x"], [5])).toBe("한국   x\n");
  });
});
