import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { HistoryEventSchema, type HistoryEvent, type WorkflowExecution } from "../../gen/tern/common/v1/common_pb";
import type { GetWorkflowExecutionHistoryResponse } from "../../gen/tern/workflow/v1/service_pb";
import { getBoolean } from "../args";
import type { CommandContext, LeafCommand } from "../command";
import { FOLLOW_WAIT_MS } from "../deadline";
import { UsageError } from "../errors";
import { EVENT_HEADERS, eventHeaderLine, eventLine, eventRow } from "../format-workflow";
import { createListJsonWriter, formatTable, messageJsonLine } from "../output";
import { executionArg, runIdFlag, workflowIdFlag, workflowNamespace, workflowNamespaceFlag } from "./common-flags";
import { createBranchesJsonWriter, createBranchesTableWriter, writeBranchPages } from "./workflow-branches";

/** An empty long-poll answer faster than this means the server does not wait; back off. */
const FAST_EMPTY_MS = 200;
const BACKOFF_MS = 500;
const FOLLOW_WAIT = create(DurationSchema, { seconds: BigInt(FOLLOW_WAIT_MS / 1000) });
/** Reads of a history the table makes when its run keeps switching branch between pages. */
const BRANCH_SWITCH_READS = 3;

interface HistoryCursor {
  namespace: string;
  execution: WorkflowExecution;
  token: Uint8Array;
}

/** Fetches one page and pins the run id the server resolved, so later pages stay on that run. */
async function fetchPage(ctx: CommandContext, cursor: HistoryCursor, wait: boolean): Promise<GetWorkflowExecutionHistoryResponse> {
  const res = await ctx.workflow().getWorkflowExecutionHistory(
    // A long poll's hold is asked for, so that its deadline comes on top of it.
    { namespace: cursor.namespace, execution: cursor.execution, nextPageToken: cursor.token, waitNewEvent: wait, waitTimeout: wait ? FOLLOW_WAIT : undefined },
    wait ? { signal: ctx.signal, timeoutMs: ctx.deadlineMs(FOLLOW_WAIT_MS) } : { signal: ctx.signal },
  );
  if (!cursor.execution.runId && res.runId) cursor.execution = { ...cursor.execution, runId: res.runId };
  return res;
}

/** Every event so far, a page at a time to onPage: until the token is empty (closed run) or a page is empty (caught up). */
export async function readHistoryPages(ctx: CommandContext, cursor: HistoryCursor, onPage: (events: HistoryEvent[]) => void): Promise<void> {
  for (;;) {
    const res = await fetchPage(ctx, cursor, false);
    const page = res.history?.events ?? [];
    onPage(page);
    if (res.nextPageToken.length === 0 || page.length === 0) return;
    cursor.token = res.nextPageToken;
  }
}

/**
 * Every event so far (readHistoryPages) as the table's rows. The table needs them all before it
 * prints (its column widths), but not the events: kept whole, a history of large payloads was
 * held in the CLI, gigabytes, to print 100 characters of each. A server reads pages on along
 * the branch the first was of; one from before refused a page whose run switched branch since
 * (a conflict was resolved), which starts the read again from the first page, up to
 * BRANCH_SWITCH_READS reads: nothing is printed yet.
 */
async function readHistoryRows(ctx: CommandContext, cursor: HistoryCursor): Promise<string[][]> {
  for (let read = 1; ; read++) {
    const rows: string[][] = [];
    cursor.token = new Uint8Array(0);
    try {
      await readHistoryPages(ctx, cursor, (page) => rows.push(...page.map(eventRow)));
      return rows;
    } catch (err) {
      if (read === BRANCH_SWITCH_READS || !(err instanceof ConnectError && err.code === Code.FailedPrecondition && cursor.token.length > 0)) throw err;
    }
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
    "With --all-branches, prints every branch of the run's history: the current one, then",
    "each branch that lost a conflict after a forced failover (from event 1, with its fork",
    "point and version history), a page of up to 1,000 events at a time, each branch printed",
    "once its last page came; -o json prints the ListHistoryBranchesResponse, written as its",
    "pages come.",
  ].join("\n"),
  flags: [
    workflowNamespaceFlag,
    workflowIdFlag,
    runIdFlag,
    { name: "follow", alias: "f", kind: "boolean", description: "Keep printing new events until the run closes" },
    { name: "all-branches", kind: "boolean", description: "Also print the branches that lost a conflict" },
  ],
  async run(ctx, args) {
    const cursor: HistoryCursor = {
      namespace: workflowNamespace(args),
      execution: executionArg(args),
      token: new Uint8Array(0),
    };
    if (getBoolean(args, "all-branches")) {
      if (getBoolean(args, "follow")) throw new UsageError("--all-branches and --follow cannot be combined");
      const writer = ctx.format === "json" ? createBranchesJsonWriter(ctx.out) : createBranchesTableWriter(ctx.out);
      return writeBranchPages(ctx, { namespace: cursor.namespace, workflowId: cursor.execution.workflowId, runId: cursor.execution.runId }, writer);
    }
    if (!getBoolean(args, "follow")) {
      if (ctx.format === "table") return void ctx.out(formatTable(EVENT_HEADERS, await readHistoryRows(ctx, cursor)));
      // A page at a time: a history of large payloads is gigabytes as JSON, past what one string holds.
      const list = createListJsonWriter(ctx.out, "events", HistoryEventSchema);
      await readHistoryPages(ctx, cursor, (page) => page.forEach((e) => list.item(e)));
      list.end();
      return;
    }
    // The header comes with the first event: a follow refused at once (no such run) printed it on stdout above its error.
    let header = ctx.format === "table";
    await followHistory(ctx, cursor, (event) => {
      if (header) ctx.out(eventHeaderLine());
      header = false;
      ctx.out(ctx.format === "json" ? messageJsonLine(HistoryEventSchema, event) : eventLine(event));
    });
  },
};

/** `workflow show`. */
export const showCommand: LeafCommand = show;
