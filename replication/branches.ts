import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { and, desc, eq } from "drizzle-orm";
import { invalidArgument, notFound } from "../src/errors";
import {
  ListHistoryBranchesResponseSchema,
  type HistoryBranchSchema,
  type ListHistoryBranchesRequest,
  type ListHistoryBranchesResponse,
} from "../src/gen/tern/admin/v1/service_pb";
import { loadBranches, readEventsOf } from "../src/history/branch-store";
import { readRunEvents } from "../src/history/execution-store";
import type { Db } from "../src/persistence/database";
import { executions, namespaces } from "../src/persistence/schema";
import { lastEventIdOf, versionHistoryToProto } from "./version-history";
import { shown } from "../src/shown";

/**
 * AdminService.ListHistoryBranches: every branch of a run, the current one first, each
 * from event 1 (`tern workflow show --all-branches`).
 */
export async function listHistoryBranches(db: Db, req: ListHistoryBranchesRequest): Promise<ListHistoryBranchesResponse> {
  if (!req.namespace || !req.workflowId) throw invalidArgument("namespace and workflow id are required");
  const [ns] = await db.select({ id: namespaces.id }).from(namespaces).where(eq(namespaces.name, req.namespace));
  if (!ns) throw notFound(`namespace ${shown(req.namespace)} not found`);
  const e = executions;
  const [run] = await db
    .select()
    .from(e)
    .where(and(eq(e.namespaceId, ns.id), eq(e.workflowId, req.workflowId), req.runId ? eq(e.runId, req.runId) : undefined))
    .orderBy(desc(e.startTime), desc(e.runId))
    .limit(1);
  if (!run) throw notFound(`workflow execution ${shown(req.workflowId)}${req.runId ? ` run ${shown(req.runId)}` : ""} not found in namespace ${req.namespace}`);
  const others = await loadBranches(db, run);
  const branches: MessageInitShape<typeof HistoryBranchSchema>[] = [
    { branchId: 0, current: true, forkEventId: 0n, versionHistory: versionHistoryToProto(run.versionHistory), events: await readRunEvents(db, run, 1) },
  ];
  for (const b of others) {
    branches.push({
      branchId: b.branchId,
      current: false,
      forkEventId: BigInt(b.forkEventId),
      versionHistory: versionHistoryToProto(b.versionHistory),
      events: await readEventsOf(db, run, b.versionHistory, 1, lastEventIdOf(b.versionHistory) + 1),
      createTime: timestampFromDate(b.createdAt),
    });
  }
  return create(ListHistoryBranchesResponseSchema, { runId: run.runId, branches });
}
