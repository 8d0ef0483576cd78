import { and, asc, eq, gte, lt, sql } from "drizzle-orm";
import { eventTime } from "../../replication/run-state";
import { versionAt } from "../../replication/version-history";
import { EventType, type HistoryEvent } from "../gen/tern/common/v1/common_pb";
import type { Db, Tx } from "../persistence/database";
import { executions, historyBranchEvents, historyBranches, historyEvents, type VersionHistoryItem } from "../persistence/schema";
import { chunksOf, ROWS_PER_INSERT, runStatement } from "../persistence/raw-statements";
import { attributesToJson, eventFromRow, eventTypeOf } from "./events";
import type { EventColumns, RunKey } from "./execution-store";

export type { RunKey };

export type BranchRow = typeof historyBranches.$inferSelect;

/** The rows of one run in a table keyed by run. */
export const runOf = (t: typeof executions | typeof historyBranches | typeof historyBranchEvents | typeof historyEvents, k: RunKey) =>
  and(eq(t.namespaceId, k.namespaceId), eq(t.workflowId, k.workflowId), eq(t.runId, k.runId));

/** The run's version history now (undefined without an execution row), read without a lock. */
export async function versionHistoryOf(db: Db | Tx, k: RunKey): Promise<VersionHistoryItem[] | undefined> {
  const [row] = await db.select({ vh: executions.versionHistory }).from(executions).where(runOf(executions, k));
  return row?.vh;
}

/** The stored columns of a replicated event, as its writer wrote it (own version and time). */
export function storedEvent(e: HistoryEvent): EventColumns {
  return {
    eventId: Number(e.eventId),
    version: Number(e.version),
    eventTime: eventTime(e),
    eventType: EventType[eventTypeOf(e.attributes)]!,
    attributes: attributesToJson(e.attributes),
  };
}

/** The run's non-current branches, oldest first. */
export function loadBranches(db: Db | Tx, key: RunKey): Promise<BranchRow[]> {
  return db.select().from(historyBranches).where(runOf(historyBranches, key)).orderBy(asc(historyBranches.branchId));
}

/** Events [from, before) of one non-current branch (only those after its fork are stored there). */
export async function readBranchEvents(db: Db | Tx, key: RunKey, branchId: number, from: number, before: number): Promise<HistoryEvent[]> {
  const t = historyBranchEvents;
  const rows = await db
    .select()
    .from(t)
    .where(and(runOf(t, key), eq(t.branchId, branchId), gte(t.eventId, from), lt(t.eventId, before)))
    .orderBy(asc(t.eventId));
  return rows.map(eventFromRow);
}

/**
 * Events [from, before) of the branch `history` describes, wherever they are stored: on
 * the current branch or on a branch that lost a conflict. Each event is matched by id and
 * version, so a branch's events are found after the run switched to another branch.
 * Returns fewer events than asked for when this cluster does not hold all of them.
 */
export async function readEventsOf(db: Db | Tx, key: RunKey, history: VersionHistoryItem[], from: number, before: number): Promise<HistoryEvent[]> {
  const wanted = (e: { eventId: number; version: number }) => versionAt(history, e.eventId) === e.version;
  const h = historyEvents;
  const current = (await db.select().from(h).where(and(runOf(h, key), gte(h.eventId, from), lt(h.eventId, before))).orderBy(asc(h.eventId)))
    .filter(wanted);
  if (current.length === before - from) return current.map(eventFromRow);
  const b = historyBranchEvents;
  const archived = await db
    .select()
    .from(b)
    .where(and(runOf(b, key), gte(b.eventId, from), lt(b.eventId, before)))
    .orderBy(asc(b.eventId), asc(b.branchId));
  const byId = new Map<number, (typeof current)[number]>();
  for (const row of [...current, ...archived.filter(wanted)]) if (!byId.has(row.eventId)) byId.set(row.eventId, row);
  const events: HistoryEvent[] = [];
  for (let id = from; id < before; id++) {
    const row = byId.get(id);
    if (!row) break;
    events.push(eventFromRow(row));
  }
  return events;
}

/** Stores events (after the fork) of a non-current branch, a statement per ROWS_PER_INSERT. */
export async function insertBranchEvents(tx: Tx, key: RunKey, branchId: number, events: HistoryEvent[]): Promise<void> {
  await Promise.all(chunksOf(events, ROWS_PER_INSERT).map((chunk) =>
    tx.insert(historyBranchEvents).values(chunk.map((e) => ({ ...key, branchId, ...storedEvent(e) })))));
}

/** The next free branch id of a run (branch 0 is the run's first history). */
export async function nextBranchId(tx: Tx, key: RunKey): Promise<number> {
  const [row] = await tx
    .select({ max: sql<number>`coalesce(max(${historyBranches.branchId}), 0)`.mapWith(Number) })
    .from(historyBranches)
    .where(runOf(historyBranches, key));
  return (row?.max ?? 0) + 1;
}

/**
 * Locks a run's key for the transaction, whether or not its row exists yet: replication,
 * backfill and conflict settling may work on one run at once.
 */
export async function lockRunKey(tx: Tx, key: RunKey): Promise<void> {
  await runStatement(tx, "select pg_advisory_xact_lock(hashtextextended($1, 0))", [runKeyText(key)]);
}

/** A run's key as one string: what lockRunKey locks, and a map key. */
export const runKeyText = (key: RunKey) => `${key.namespaceId}/${key.workflowId}/${key.runId}`;
