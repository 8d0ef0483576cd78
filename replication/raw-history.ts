import { create } from "@bufbuild/protobuf";
import { and, eq, sql } from "drizzle-orm";
import { invalidArgument, notFound } from "../src/errors";
import { exactNumber } from "../src/frontend/convert";
import {
  GetWorkflowExecutionRawHistoryResponseSchema,
  type GetWorkflowExecutionRawHistoryRequest,
  type GetWorkflowExecutionRawHistoryResponse,
} from "../src/gen/tern/admin/v1/service_pb";
import { readEventsOf } from "../src/history/branch-store";
import { readRunEvents, type ExecutionRow } from "../src/history/execution-store";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import type { VersionHistoryItem } from "../src/persistence/schema";
import { HISTORY_PAGE_BYTES, pageEnd } from "../src/history/queries";
import type { Db } from "../src/persistence/database";
import { executions } from "../src/persistence/schema";
import { versionHistoryFromProto, versionHistoryToProto } from "./version-history";
import { shown } from "../src/shown";

/**
 * AdminService.GetWorkflowExecutionRawHistory: the events of one run by event id range
 * with its version history, so a passive cluster can repair a gap or backfill a run
 * (DESIGN.md section 4). With maximum_page_bytes (at most HISTORY_PAGE_BYTES) a current
 * branch's range comes a page at a time: a run of 150 MB of events was one answer, which
 * took the source 1.8 GB and the receiver 1.3 GB of memory to send and take.
 */
export async function readRawHistory(db: Db, req: GetWorkflowExecutionRawHistoryRequest): Promise<GetWorkflowExecutionRawHistoryResponse> {
  if (!req.namespaceId || !req.workflowId || !req.runId) throw invalidArgument("namespace id, workflow id and run id are required");
  const key = and(
    eq(executions.namespaceId, req.namespaceId),
    eq(executions.workflowId, req.workflowId),
    eq(executions.runId, req.runId),
  );
  const [run] = await db.select().from(executions).where(key);
  if (!run) throw notFound(`workflow execution ${shown(req.workflowId)} run ${shown(req.runId)} not found in namespace id ${shown(req.namespaceId)}`);
  const first = exactNumber(req.firstEventId, "first_event_id") || 1;
  const next = exactNumber(req.nextEventId, "next_event_id") || run.nextEventId;
  // A peer repairing a branch that lost a conflict here asks for that branch's events.
  const wanted = req.versionHistory ? versionHistoryFromProto(req.versionHistory.items) : undefined;
  const budget = Math.min(exactNumber(req.maximumPageBytes, "maximum_page_bytes"), HISTORY_PAGE_BYTES);
  const paged = budget > 0 && next > first;
  if (!wanted) return answer(run, await readRunEvents(db, run, first, { before: paged ? pageEnd(run, first, next - first, budget) : next }));
  // Another branch's page is measured on every branch's events of its ids: on the current
  // branch's alone, a branch kept past the current one's end came whole past it.
  const [end] = paged ? await db.select({ id: sql<number>`${pageEnd(run, first, next - first, budget, { branches: true })}`.mapWith(Number) }).from(executions).where(key) : [];
  return answer(run, await readEventsOf(db, run, wanted, first, end && end.id > first ? Math.min(end.id, next) : next), wanted);
}

/** The answer: the events, and the version history of their branch (the run's current one unless asked for another). */
function answer(run: ExecutionRow, events: HistoryEvent[], wanted?: VersionHistoryItem[]): GetWorkflowExecutionRawHistoryResponse {
  return create(GetWorkflowExecutionRawHistoryResponseSchema, {
    events,
    versionHistory: versionHistoryToProto(wanted ?? run.versionHistory),
    nextEventId: BigInt(run.nextEventId),
  });
}
