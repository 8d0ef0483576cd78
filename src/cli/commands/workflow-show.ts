import { HistoryEventSchema, type HistoryEvent, type WorkflowExecution } from "../../gen/tern/common/v1/common_pb";
import type { GetWorkflowExecutionHistoryResponse } from "../../gen/tern/workflow/v1/service_pb";
import { getBoolean } from "../args";
import type { CommandContext, LeafCommand } from "../command";
import { eventHeaderLine, eventLine, eventTable } from "../format-workflow";
import { listJson, messageJsonLine } from "../output";
import { executionArg, runIdFlag, workflowIdFlag, workflowNamespace, workflowNamespaceFlag } from "./common-flags";

/** An empty long-poll answer faster than this means the server does not wait; back off. */
const FAST_EMPTY_MS = 200;
const BACKOFF_MS = 500;

interface HistoryCursor {
  namespace: string;
  execution: WorkflowExecution;
  token: Uint8Array;
}

/** Fetches one page and pins the run id the server resolved, so later pages stay on that run. */
async function fetchPage(ctx: CommandContext, cursor: HistoryCursor, wait: boolean): Promise<GetWorkflowExecutionHistoryResponse> {
  const res = await ctx.workflow().getWorkflowExecutionHistory(
    { namespace: cursor.namespace, execution: cursor.execution, nextPageToken: cursor.token, waitNewEvent: wait },
    { signal: ctx.signal },
  );
  if (!cursor.execution.runId && res.runId) cursor.execution = { ...cursor.execution, runId: res.runId };
  return res;
}

/** Every event so far: pages until the token is empty (closed run) or a page is empty (caught up). */
export async function readHistory(ctx: CommandContext, cursor: HistoryCursor): Promise<HistoryEvent[]> {
  const events: HistoryEvent[] = [];
  for (;;) {
    const res = await fetchPage(ctx, cursor, false);
    const page = res.history?.events ?? [];
    events.push(...page);
    if (res.nextPageToken.length === 0 || page.length === 0) return events;
    cursor.token = res.nextPageToken;
  }
}

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });
}

/**
 * Long-polls with waitNewEvent and the last token, handing each new event to emit,
 * until the server returns an empty token (the run closed and every event was sent).
 */
export async function followHistory(
  ctx: CommandContext,
  cursor: HistoryCursor,
  emit: (event: HistoryEvent) => void,
): Promise<void> {
  let lastEventId = 0n;
  for (;;) {
    const began = Date.now();
    const res = await fetchPage(ctx, cursor, true);
    const page = res.history?.events ?? [];
    for (const event of page) {
      if (event.eventId <= lastEventId) continue; // a server replaying a page must not print twice
      lastEventId = event.eventId;
      emit(event);
    }
    if (res.nextPageToken.length === 0) return;
    cursor.token = res.nextPageToken;
    if (page.length === 0 && Date.now() - began < FAST_EMPTY_MS) await pause(BACKOFF_MS, ctx.signal);
    if (ctx.signal.aborted) throw ctx.signal.reason;
  }
}

const show: LeafCommand = {
  kind: "leaf",
  name: "show",
  summary: "Show the event history of a workflow execution",
  details: [
    'With -o json, prints { "events": [HistoryEvent, ...] }.',
    "With --follow, prints events as they are written until the run closes (or Ctrl-C);",
    "with --follow -o json, prints one HistoryEvent JSON object per line (NDJSON).",
  ].join("\n"),
  flags: [
    workflowNamespaceFlag,
    workflowIdFlag,
    runIdFlag,
    { name: "follow", alias: "f", kind: "boolean", description: "Keep printing new events until the run closes" },
  ],
  async run(ctx, args) {
    const cursor: HistoryCursor = {
      namespace: workflowNamespace(args),
      execution: executionArg(args),
      token: new Uint8Array(0),
    };
    if (!getBoolean(args, "follow")) {
      const events = await readHistory(ctx, cursor);
      ctx.out(ctx.format === "json" ? listJson("events", HistoryEventSchema, events) : eventTable(events));
      return;
    }
    if (ctx.format === "table") ctx.out(eventHeaderLine());
    await followHistory(ctx, cursor, (event) =>
      ctx.out(ctx.format === "json" ? messageJsonLine(HistoryEventSchema, event) : eventLine(event)),
    );
  },
};

/** `workflow show`. */
export const showCommand: LeafCommand = show;
