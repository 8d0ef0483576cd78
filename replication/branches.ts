import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { and, desc, eq, sql, type SQL } from "drizzle-orm";
import { z } from "zod";
import { failedPrecondition, invalidArgument, notFound } from "../src/errors";
import {
  ListHistoryBranchesResponseSchema,
  type HistoryBranchSchema,
  type ListHistoryBranchesRequest,
  type ListHistoryBranchesResponse,
} from "../src/gen/tern/admin/v1/service_pb";
import { loadBranches } from "../src/history/branch-store";
import type { ExecutionRow } from "../src/history/execution-store";
import { HISTORY_PAGE_BYTES, rangeBytes, readBranchEvents } from "../src/history/queries";
import { clampPage } from "../src/namespace/registry";
import type { Db, Tx } from "../src/persistence/database";
import { decodeToken, encodeToken } from "../src/persistence/page-token";
import { executions, namespaces, type VersionHistoryItem } from "../src/persistence/schema";
import { lastEventIdOf, versionAt, versionHistoryToProto } from "./version-history";
import { shown } from "../src/shown";

/** Most events of an answer to a caller that does not page (page_size 0, no token). */
export const WHOLE_ANSWER_EVENTS = 10_000;
/** Most bytes of event attributes (measured as history pages are) of such an answer. */
export const WHOLE_ANSWER_BYTES = 16 << 20;

/** How much an answer holds: a page's bytes, and a whole answer's (page_size 0, no token) events and bytes. */
export interface AnswerBounds {
  pageBytes: number;
  wholeEvents: number;
  wholeBytes: number;
}

const DEFAULT_BOUNDS: AnswerBounds = { pageBytes: HISTORY_PAGE_BYTES, wholeEvents: WHOLE_ANSWER_EVENTS, wholeBytes: WHOLE_ANSWER_BYTES };

/** A page's reads: one snapshot of the database (PGlite runs one transaction at a time). */
const SNAPSHOT = { isolationLevel: "repeatable read", accessMode: "read only" } as const;

/**
 * The token: the run, the branch (0: the current one) and its next event id, and the version of
 * the event before it, by which a branch that changed under the pages (conflict resolution) is told.
 */
const BRANCHES_TOKEN = z.object({ runId: z.string(), workflowId: z.string(), branch: z.number().int().min(0), next: z.number().int().min(1), v: z.number().int() });
type Position = Pick<z.infer<typeof BRANCHES_TOKEN>, "branch" | "next" | "v">;

type Segment = MessageInitShape<typeof HistoryBranchSchema>;

interface Branch {
  id: number;
  history: VersionHistoryItem[];
  /** The branch's next event id. */
  end: number;
  meta: Omit<Segment, "events" | "$typeName">;
}

/**
 * AdminService.ListHistoryBranches: every branch of a run, the current one first, each from
 * event 1 (`tern workflow show --all-branches`). With page_size (or a token) an answer is a page
 * of at most page_size events (1,000) and HISTORY_PAGE_BYTES of their attributes, as a history
 * page is: a run of long branches was one answer of them all, past message limits and memory.
 * Without, every branch whole as before, up to WHOLE_ANSWER_EVENTS and WHOLE_ANSWER_BYTES.
 */
export async function listHistoryBranches(db: Db, req: ListHistoryBranchesRequest, bounds: Partial<AnswerBounds> = {}): Promise<ListHistoryBranchesResponse> {
  const { pageBytes, wholeEvents, wholeBytes } = { ...DEFAULT_BOUNDS, ...bounds };
  if (!req.namespace || !req.workflowId) throw invalidArgument("namespace and workflow id are required");
  if (req.pageSize < 0) throw invalidArgument(`page_size must not be negative, got ${req.pageSize}`);
  const pos = req.nextPageToken.length ? decodeToken(req.nextPageToken, BRANCHES_TOKEN) : undefined;
  if (pos && pos.workflowId !== req.workflowId) throw invalidArgument(`next_page_token is for workflow ${shown(pos.workflowId)}, not the requested workflow ${shown(req.workflowId)}`);
  if (pos && req.runId && pos.runId !== req.runId) throw invalidArgument(`next_page_token is for run ${shown(pos.runId)}, not the requested run ${shown(req.runId)}`);
  const paged = req.pageSize > 0 || pos !== undefined;
  // One snapshot: the run, its branches and their events read apart could answer the run's
  // old version history with the events of the branch a conflict switched it to in between.
  const { run, page } = await db.transaction(async (tx) => {
    const run = await findRun(tx, req.namespace, req.workflowId, pos?.runId ?? req.runId);
    return { run, page: await readPage(tx, run, pos ?? { branch: 0, next: 1, v: 0 }, paged ? clampPage(req.pageSize) : wholeEvents, paged ? pageBytes : wholeBytes) };
  }, SNAPSHOT);
  if (!paged && page.rest) {
    throw failedPrecondition(
      `the branches of workflow ${shown(req.workflowId)} run ${shown(run.runId)} hold more than one answer carries ` +
        `(${wholeEvents} events or ${wholeBytes} bytes): ask with page_size and follow next_page_token, as tern workflow show --all-branches does`,
    );
  }
  const nextPageToken = page.rest ? encodeToken({ runId: run.runId, workflowId: run.workflowId, ...page.rest }) : new Uint8Array();
  return create(ListHistoryBranchesResponseSchema, { runId: run.runId, branches: page.segments, nextPageToken });
}

async function findRun(db: Db | Tx, namespace: string, workflowId: string, runId: string): Promise<ExecutionRow> {
  const [ns] = await db.select({ id: namespaces.id }).from(namespaces).where(eq(namespaces.name, namespace));
  if (!ns) throw notFound(`namespace ${shown(namespace)} not found`);
  const e = executions;
  const [run] = await db
    .select()
    .from(e)
    .where(and(eq(e.namespaceId, ns.id), eq(e.workflowId, workflowId), runId ? eq(e.runId, runId) : undefined))
    .orderBy(desc(e.startTime), desc(e.runId))
    .limit(1);
  if (!run) throw notFound(`workflow execution ${shown(workflowId)}${runId ? ` run ${shown(runId)}` : ""} not found in namespace ${namespace}`);
  return run;
}

/** The run's branches in the order they are listed: the current one (id 0), then the others by id. */
async function branchesOf(db: Db | Tx, run: ExecutionRow): Promise<Branch[]> {
  const current: Branch = { id: 0, history: run.versionHistory, end: run.nextEventId, meta: { branchId: 0, current: true, forkEventId: 0n, versionHistory: versionHistoryToProto(run.versionHistory) } };
  const others = (await loadBranches(db, run)).map((b): Branch => ({
    id: b.branchId,
    history: b.versionHistory,
    end: lastEventIdOf(b.versionHistory) + 1,
    meta: { branchId: b.branchId, current: false, forkEventId: BigInt(b.forkEventId), versionHistory: versionHistoryToProto(b.versionHistory), createTime: timestampFromDate(b.createdAt) },
  }));
  return [current, ...others];
}

/**
 * The branches' events from pos on, up to limit events and budget bytes (the first event of each
 * branch the page holds always goes), a branch after another while both fit; rest: where the next page starts.
 */
async function readPage(db: Db | Tx, run: ExecutionRow, pos: Position, limit: number, budget: number): Promise<{ segments: Segment[]; rest?: Position }> {
  const branches = (await branchesOf(db, run)).filter((b) => b.id >= pos.branch);
  if (pos.next > 1 && (branches[0]?.id !== pos.branch || versionAt(branches[0].history, pos.next - 1) !== pos.v)) {
    throw failedPrecondition(`the branches of workflow ${shown(run.workflowId)} run ${shown(run.runId)} changed while they were paged (a conflict was resolved): list them again from the first page`);
  }
  const segments: Segment[] = [];
  let left = limit;
  let bytes = budget;
  for (const b of branches) {
    const from = b.id === pos.branch ? pos.next : 1;
    if (left <= 0 || bytes <= 0) return { segments, rest: { branch: b.id, next: from, v: versionAt(b.history, from - 1) ?? 0 } };
    const { events, before } = await readSegment(db, run, b, from, Math.min(left, b.end - from), bytes);
    if (events.length > 0 || from === 1) segments.push({ ...b.meta, events });
    const next = from + events.length;
    // A branch whose events this cluster does not all hold ends at the first it lacks, as it did whole.
    if (next === before && next < b.end) return { segments, rest: { branch: b.id, next, v: versionAt(b.history, next - 1) ?? 0 } };
    left -= events.length;
    if (events.length > 0 && left > 0 && b !== branches.at(-1)) bytes -= await scalar(db, run, rangeBytes(run, from, next, { branches: b.id !== 0 }));
  }
  return { segments };
}

/** Events [from, before) of branch b, before where the page ends (pageEnd) within count events and budget. */
const readSegment = (db: Db | Tx, run: ExecutionRow, b: Branch, from: number, count: number, budget: number) =>
  readBranchEvents(db, run, b.id !== 0 ? b.history : undefined, from, count, budget);

/** A number computed in SQL (pageEnd's, rangeBytes') for run. */
async function scalar(db: Db | Tx, run: ExecutionRow, value: SQL<number>): Promise<number> {
  const key = and(eq(executions.namespaceId, run.namespaceId), eq(executions.workflowId, run.workflowId), eq(executions.runId, run.runId));
  const [row] = await db.select({ n: sql<number>`${value}`.mapWith(Number) }).from(executions).where(key);
  return row?.n ?? 0;
}
