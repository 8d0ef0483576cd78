import { toJson, type JsonObject } from "@bufbuild/protobuf";
import { HistoryBranchSchema, type HistoryBranch, type ListHistoryBranchesResponse } from "../../gen/tern/admin/v1/service_pb";
import { HistoryEventSchema } from "../../gen/tern/common/v1/common_pb";
import type { CommandContext } from "../command";
import { EVENT_HEADERS, eventRow, formatVersionHistory } from "../format-workflow";
import { createJsonStream, formatTable, type Writer } from "../output";

/** Most events a page of branches asks for: the server's most. */
export const BRANCH_PAGE_SIZE = 1000;

/** What one run's branches are asked by. */
export interface BranchesRequest {
  namespace: string;
  workflowId: string;
  runId: string;
}

/** Writes a run's branches as their pages come: each page's branches, a branch cut by a page going on in the next. */
export interface BranchesWriter {
  segment(runId: string, branch: HistoryBranch): void;
  end(): void;
}

/**
 * Every page of a run's branches (ListHistoryBranches with page_size) to writer, following
 * next_page_token until the server gives none: a server from before pages answers every branch
 * whole without one.
 */
export async function writeBranchPages(ctx: CommandContext, req: BranchesRequest, writer: BranchesWriter): Promise<void> {
  let token: Uint8Array = new Uint8Array(0);
  for (;;) {
    const res: ListHistoryBranchesResponse = await ctx.admin().listHistoryBranches({ ...req, pageSize: BRANCH_PAGE_SIZE, nextPageToken: token }, { signal: ctx.signal });
    for (const branch of res.branches) writer.segment(res.runId, branch);
    if (res.nextPageToken.length === 0) break;
    // A page that moved nothing on, asked again with its own token, would be asked for forever.
    if (res.branches.every((b) => b.events.length === 0) && sameBytes(res.nextPageToken, token)) {
      throw new Error("the server answered the same page of branches again, with no events: the listing stopped there");
    }
    token = res.nextPageToken;
  }
  writer.end();
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** A branch's heading line. */
function branchHead(runId: string, b: HistoryBranch): string {
  return b.current
    ? `current branch (run ${runId}): ${formatVersionHistory(b.versionHistory)}`
    : `branch ${b.branchId}, lost a conflict, forked after event ${b.forkEventId}: ${formatVersionHistory(b.versionHistory)}`;
}

/**
 * Each branch as its heading line and its event table, the current branch first, a branch
 * written once its last page came: its table's widths need all its rows (as show's table does,
 * the rows are kept, not the events).
 */
export function createBranchesTableWriter(out: Writer): BranchesWriter {
  let open: { id: number; head: string; rows: string[][] } | undefined;
  let written = 0;
  const flush = () => {
    if (open) out(`${written++ ? "\n" : ""}${open.head}\n${formatTable(EVENT_HEADERS, open.rows)}`);
    open = undefined;
  };
  return {
    segment(runId, b) {
      if (open?.id !== b.branchId) {
        flush();
        open = { id: b.branchId, head: branchHead(runId, b), rows: [] };
      }
      open.rows.push(...b.events.map(eventRow));
    },
    end: flush,
  };
}

/**
 * The text `-o json` printed for a whole ListHistoryBranchesResponse, written as the pages come,
 * an event at a time: a run's branches of large payloads, held whole, were gigabytes.
 */
export function createBranchesJsonWriter(out: Writer): BranchesWriter {
  const json = createJsonStream(out);
  // Fields after events (create_time) are written after them, in the order toJson gives.
  const eventsField = HistoryBranchSchema.fields.find((f) => f.localName === "events")!;
  const later = new Set(HistoryBranchSchema.fields.filter((f) => f.number > eventsField.number).map((f) => f.jsonName));
  let started = false;
  let open: { id: number; after: [string, unknown][]; events: boolean } | undefined;
  const closeBranch = () => {
    if (!open) return;
    if (open.events) json.close("]");
    for (const [k, v] of open.after) json.value(k, v);
    json.close("}");
    open = undefined;
  };
  return {
    segment(runId, b) {
      if (!started) {
        json.open(undefined, "{");
        if (runId) json.value("runId", runId);
        json.open("branches", "[");
        started = true;
      }
      if (open?.id !== b.branchId) {
        closeBranch();
        const fields = Object.entries(toJson(HistoryBranchSchema, { ...b, events: [] }) as JsonObject);
        json.open(undefined, "{");
        for (const [k, v] of fields) if (!later.has(k)) json.value(k, v);
        open = { id: b.branchId, after: fields.filter(([k]) => later.has(k)), events: false };
      }
      for (const e of b.events) {
        if (!open.events) json.open("events", "[");
        open.events = true;
        json.value(undefined, toJson(HistoryEventSchema, e));
      }
    },
    end() {
      if (!started) return void out("{}\n");
      closeBranch();
      json.close("]");
      json.close("}");
      out("\n");
    },
  };
}
