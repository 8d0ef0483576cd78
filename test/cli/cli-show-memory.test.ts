import { describe, expect, test } from "bun:test";
import { heapStats } from "bun:jsc";
import { create } from "@bufbuild/protobuf";
import { EventType, HistoryEventSchema } from "../../src/gen/tern/common/v1/common_pb";
import { runCli } from "./harness";

const PAGES = 24;
const PAYLOAD_BYTES = 4 << 20;

/** A signal carrying PAYLOAD_BYTES of JSON text (a string of x's). */
function bigSignal(id: number) {
  const data = new TextEncoder().encode(JSON.stringify("x".repeat(PAYLOAD_BYTES - 2)));
  return create(HistoryEventSchema, {
    eventId: BigInt(id),
    version: 1n,
    eventType: EventType.WORKFLOW_EXECUTION_SIGNALED,
    attributes: { case: "workflowExecutionSignaledEventAttributes", value: { signalName: "s", input: { payloads: [{ metadata: {}, data }] } } },
  });
}

/** Bytes the heap and what it holds outside it (typed arrays' stores) take after a full collection. */
function heldBytes(): number {
  Bun.gc(true);
  const s = heapStats();
  return s.heapSize + s.extraMemorySize;
}

describe("workflow show as a table", () => {
  // The table needs every row before it prints (column widths), and show kept every event to
  // make them, payloads and all: a history of large payloads (up to 2 MB each, 51,200 events)
  // was held whole in the CLI, gigabytes, to print 100 characters of each. It keeps the rows,
  // each cell a string of its own (a slice shares the payload's text it was cut from).
  test("TestShowOfAHistoryOfLargePayloadsHoldsItsRowsNotItsEvents", async () => {
    const held: number[] = [];
    const r = await runCli(["workflow", "show", "-w", "w"], {
      workflow: {
        getWorkflowExecutionHistory(req) {
          const page = req.nextPageToken.length === 0 ? 0 : req.nextPageToken[0]!;
          held.push(heldBytes());
          return { history: { events: [bigSignal(page + 1)] }, nextPageToken: page + 1 < PAGES ? new Uint8Array([page + 1]) : new Uint8Array(0), runId: "r1" };
        },
      },
    });
    expect(r.code).toBe(0);
    expect(r.stdout.trimEnd().split("\n")).toHaveLength(PAGES + 1);
    expect(r.stdout).toContain("WorkflowExecutionSignaled  name=s input=");
    // Held whole: 8 MiB more at each page (176 MiB by the last); cells cut from the payloads' text: 10 MiB a page; own rows: flat.
    const grown = held.at(-1)! - held[2]!;
    expect(grown).toBeLessThan(6 * PAYLOAD_BYTES);
  });
});
