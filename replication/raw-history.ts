import { create } from "@bufbuild/protobuf";
import { and, eq } from "drizzle-orm";
import { invalidArgument, notFound } from "../src/errors";
import { exactNumber } from "../src/frontend/convert";
import {
  GetWorkflowExecutionRawHistoryResponseSchema,
  type GetWorkflowExecutionRawHistoryRequest,
  type GetWorkflowExecutionRawHistoryResponse,
} from "../src/gen/tern/admin/v1/service_pb";
import { readEventsOf } from "../src/history/branch-store";
import { readRunEvents } from "../src/history/execution-store";
import type { Db } from "../src/persistence/database";
import { executions } from "../src/persistence/schema";
import { versionHistoryFromProto, versionHistoryToProto } from "./version-history";
import { shown } from "../src/shown";

/**
 * AdminService.GetWorkflowExecutionRawHistory: the events of one run by event id range
 * with its version history, so a passive cluster can repair a gap (DESIGN.md section 4).
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
  const wanted = req.versionHistory ? versionHistoryFromProto(req.versionHistory.items) : undefined;
  // A peer repairing a branch that lost a conflict here asks for that branch's events.
  const events = wanted ? await readEventsOf(db, run, wanted, first, next) : await readRunEvents(db, run, first, { before: next });
  return create(GetWorkflowExecutionRawHistoryResponseSchema, {
    events,
    versionHistory: versionHistoryToProto(wanted ?? run.versionHistory),
    nextEventId: BigInt(run.nextEventId),
  });
}
