import { and, asc, desc, eq, gte, lt, sql } from "drizzle-orm";
import type { Db, Tx } from "../persistence/database";
import { executions, historyEvents, requestIds, timerTasks, type VersionHistoryItem } from "../persistence/schema";
import { attributesToJson, eventFromRow, eventTypeOf, type EventAttributes } from "./events";

export type ExecutionRow = typeof executions.$inferSelect;

/** The run to act on, locked for the transaction: runId's, or the workflow's current run. */
export async function lockRun(tx: Tx, namespaceId: string, workflowId: string, runId: string): Promise<ExecutionRow | undefined> {
  const key = and(eq(executions.namespaceId, namespaceId), eq(executions.workflowId, workflowId));
  const query = tx
    .select()
    .from(executions)
    .where(runId ? and(key, eq(executions.runId, runId)) : key)
    .orderBy(desc(sql`${executions.status} = 'RUNNING'`), desc(executions.startTime), desc(executions.runId))
    .limit(1)
    .for("update")
    .prepare("lock_run");
  const [row] = await query.execute();
  return row;
}

/** Events of one run with ids in [from, before), in order, at most limit of them. */
export async function readRunEvents(
  db: Db | Tx,
  run: { namespaceId: string; workflowId: string; runId: string },
  from: number,
  { before, limit }: { before?: number; limit?: number } = {},
) {
  const query = db
    .select()
    .from(historyEvents)
    .where(
      and(
        eq(historyEvents.namespaceId, run.namespaceId),
        eq(historyEvents.workflowId, run.workflowId),
        eq(historyEvents.runId, run.runId),
        gte(historyEvents.eventId, from),
        before === undefined ? undefined : lt(historyEvents.eventId, before),
      ),
    )
    .orderBy(asc(historyEvents.eventId));
  return (limit === undefined ? query : query.limit(limit)).then((rows) => rows.map(eventFromRow));
}

/** The first result stored for requestId on this workflow, if any. */
export async function findRequest(tx: Tx, namespaceId: string, workflowId: string, requestId: string) {
  const [row] = await tx
    .select()
    .from(requestIds)
    .where(and(eq(requestIds.namespaceId, namespaceId), eq(requestIds.workflowId, workflowId), eq(requestIds.requestId, requestId)));
  return row;
}

/**
 * Claims requestId for this write. Returns false when an earlier write holds it; a
 * concurrent holder makes this wait for its commit (the primary key serializes them).
 */
export async function claimRequest(
  tx: Tx,
  r: { namespaceId: string; workflowId: string; requestId: string; runId: string; eventId: number },
): Promise<boolean> {
  const rows = await tx.insert(requestIds).values(r).onConflictDoNothing().returning({ id: requestIds.requestId }).prepare("claim_request").execute();
  return rows.length > 0;
}

/** One event to append; version and time are the write's. */
export interface NewEvent {
  attributes: EventAttributes;
}

/** Inserts events numbered from firstEventId and returns the version history after them. */
export async function insertEvents(
  tx: Tx,
  run: { namespaceId: string; workflowId: string; runId: string },
  firstEventId: number,
  version: number,
  time: Date,
  events: NewEvent[],
  history: VersionHistoryItem[],
): Promise<VersionHistoryItem[]> {
  await tx.insert(historyEvents).values(
    events.map((e, i) => ({
      ...run,
      eventId: firstEventId + i,
      version,
      eventTime: time,
      eventType: eventTypeName(e.attributes),
      attributes: attributesToJson(e.attributes),
    })),
  ).prepare("insert_events").execute();
  return extendVersionHistory(history, firstEventId + events.length - 1, version);
}

/** Version history after appending events up to lastEventId at version (DESIGN.md section 4). */
export function extendVersionHistory(history: VersionHistoryItem[], lastEventId: number, version: number): VersionHistoryItem[] {
  const last = history.at(-1);
  if (last && last.version === version) return [...history.slice(0, -1), { eventId: lastEventId, version }];
  if (last && version < last.version) throw new Error(`version ${version} is lower than the history's ${last.version}`);
  return [...history, { eventId: lastEventId, version }];
}

/** Saves the run's new state if nobody else wrote it since it was read. */
export async function saveRun(tx: Tx, prev: ExecutionRow, next: Partial<ExecutionRow>): Promise<void> {
  const rows = await tx
    .update(executions)
    .set({ ...next, dbVersion: prev.dbVersion + 1 })
    .where(
      and(
        eq(executions.namespaceId, prev.namespaceId),
        eq(executions.workflowId, prev.workflowId),
        eq(executions.runId, prev.runId),
        eq(executions.dbVersion, prev.dbVersion),
      ),
    )
    .returning({ runId: executions.runId })
    .prepare("save_run")
    .execute();
  if (rows.length !== 1) throw new Error(`execution ${prev.workflowId}/${prev.runId} changed concurrently`);
}

/** Removes the run's pending timers (the run closed). */
export async function deleteTimers(tx: Tx, run: { namespaceId: string; workflowId: string; runId: string }): Promise<void> {
  await tx
    .delete(timerTasks)
    .where(
      and(eq(timerTasks.namespaceId, run.namespaceId), eq(timerTasks.workflowId, run.workflowId), eq(timerTasks.runId, run.runId)),
    );
}

function eventTypeName(attributes: EventAttributes): string {
  return EVENT_TYPE_NAMES[eventTypeOf(attributes)]!;
}

import { EventType } from "../gen/tern/common/v1/common_pb";
const EVENT_TYPE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(EventType)
    .filter(([, v]) => typeof v === "number")
    .map(([k, v]) => [v as number, k]),
);
