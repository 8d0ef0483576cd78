import { z } from "zod";
import { create } from "@bufbuild/protobuf";
import { and, asc, count, eq, gt, inArray, or } from "drizzle-orm";
import { invalidArgument, notFound } from "../src/errors";
import {
  ListExecutionsForReplicationResponseSchema,
  type ListExecutionsForReplicationRequest,
  type ListExecutionsForReplicationResponse,
} from "../src/gen/tern/admin/v1/backfill_pb";
import type { Db } from "../src/persistence/database";
import { decodeToken, encodeToken } from "../src/persistence/page-token";
import { executions, historyBranches, namespaces, type VersionHistoryItem } from "../src/persistence/schema";
import { shown } from "../src/shown";
import type { BackfillCursor } from "./backfill-jobs";
import { versionHistoryToProto } from "./version-history";

/** ListExecutionsForReplication's token: the last run (a BackfillCursor). */
const CURSOR_TOKEN: z.ZodType<BackfillCursor> = z.object({ workflowId: z.string(), runId: z.string() });

/**
 * BackfillService.ListExecutionsForReplication, the source side of backfill (its
 * counterpart is backfill-receiver.ts): every run of a namespace, open or closed, in
 * (workflowId, runId) order, with its next event id and version history so the receiver
 * fetches only what it lacks, and the runs whose history diverged from its own, and the
 * version histories of its kept (losing) branches, which the receiver fetches if it lacks them.
 */
export async function listExecutionsForReplication(db: Db, req: ListExecutionsForReplicationRequest): Promise<ListExecutionsForReplicationResponse> {
  if (!req.namespaceId) throw invalidArgument("namespace id is required");
  const size = req.pageSize > 0 ? Math.min(req.pageSize, 1000) : 100;
  const after = req.nextPageToken.length ? decodeToken(req.nextPageToken, CURSOR_TOKEN) : undefined;
  const inNamespace = eq(executions.namespaceId, req.namespaceId);
  const past = after
    ? or(gt(executions.workflowId, after.workflowId), and(eq(executions.workflowId, after.workflowId), gt(executions.runId, after.runId)))
    : undefined;
  // Counted for the first page only: a count reads every run of the namespace, and at every page
  // of 200 it was about 6% of a backfill's time at a million runs. The receiver keeps it.
  const [rows, [total]] = await Promise.all([
    db
      .select({ workflowId: executions.workflowId, runId: executions.runId, nextEventId: executions.nextEventId, versionHistory: executions.versionHistory })
      .from(executions)
      .where(and(inNamespace, past))
      .orderBy(asc(executions.workflowId), asc(executions.runId))
      .limit(size + 1),
    after ? [{ n: 0 }] : db.select({ n: count() }).from(executions).where(inNamespace),
  ]);
  const page = rows.slice(0, size);
  // An empty listing of a namespace this cluster does not hold (deleted here, or not replicated
  // here yet) ended the receiver's job DONE with nothing brought.
  if (!page.length && !(await db.select({ id: namespaces.id }).from(namespaces).where(eq(namespaces.id, req.namespaceId))).length) {
    throw notFound(`namespace id ${shown(req.namespaceId)} not found`);
  }
  const kept = await keptBranchesOf(db, req.namespaceId, page.map((r) => r.runId));
  const last = page.at(-1);
  return create(ListExecutionsForReplicationResponseSchema, {
    executions: page.map((r) => ({
      workflowId: r.workflowId, runId: r.runId, nextEventId: BigInt(r.nextEventId), versionHistory: versionHistoryToProto(r.versionHistory),
      keptBranches: (kept.get(r.runId) ?? []).map(versionHistoryToProto),
    })),
    nextPageToken: rows.length > size && last ? encodeToken({ workflowId: last.workflowId, runId: last.runId }) : new Uint8Array(),
    total: BigInt(total?.n ?? 0),
  });
}

/** The version histories of the non-current branches of runs of a namespace, by run id. */
async function keptBranchesOf(db: Db, namespaceId: string, runIds: string[]): Promise<Map<string, VersionHistoryItem[][]>> {
  const byRun = new Map<string, VersionHistoryItem[][]>();
  if (!runIds.length) return byRun;
  const b = historyBranches;
  const rows = await db
    .select({ runId: b.runId, versionHistory: b.versionHistory })
    .from(b)
    .where(and(eq(b.namespaceId, namespaceId), inArray(b.runId, runIds)))
    .orderBy(asc(b.runId), asc(b.branchId));
  for (const r of rows) byRun.set(r.runId, [...(byRun.get(r.runId) ?? []), r.versionHistory]);
  return byRun;
}
