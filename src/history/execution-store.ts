import { and, asc, eq, getTableColumns, gte, lt, type SQL } from "drizzle-orm";
import type { Db, Tx } from "../persistence/database";
import { chunksOf, composite, keysInOrder, paddedChunks, padRows, ROWS_PER_INSERT, runGuard, runStatement, tableCodec, textCache, valuesList, type StatementPart } from "../persistence/raw-statements";
import { executions, historyEvents, requestIds, timerTasks, type VersionHistoryItem } from "../persistence/schema";
import { attributesToJson, eventFromRow, eventTypeOf, type EventAttributes } from "./events";

export type ExecutionRow = typeof executions.$inferSelect;
/** A run's key. */
export type RunKey = { namespaceId: string; workflowId: string; runId: string };

const executionsSql = tableCodec(executions);
const eventsSql = tableCodec(historyEvents);
const requestsSql = tableCodec(requestIds);
const timersSql = tableCodec(timerTasks);
const runKeyWhere = (first: number) =>
  `${executionsSql.name("namespaceId")} = $${first} and ${executionsSql.name("workflowId")} = $${first + 1} and ${executionsSql.name("runId")} = $${first + 2}`;

/** Which of a workflow's runs is its current one: the open run, else the one started last. */
export const CURRENT_RUN_ORDER =
  `(${executionsSql.name("status")} = 'RUNNING') desc, ${executionsSql.name("startTime")} desc, ${executionsSql.name("runId")} desc`;

const lockRunText = textCache((byRunId: boolean) =>
  `select ${executionsSql.all()} from ${executionsSql.table} where ${executionsSql.name("namespaceId")} = $1 and ${executionsSql.name("workflowId")} = $2` +
  (byRunId ? ` and ${executionsSql.name("runId")} = $3` : "") +
  ` order by ${CURRENT_RUN_ORDER} limit 1 for update`);

/** A start sent in one round trip met a run of its workflow id: it is made again from a read. */
export class RunExistsError extends Error {
  override name = "RunExistsError";
}

const NO_RUN =
  `1 / (not exists (select 1 from ${executionsSql.table} where ${executionsSql.name("namespaceId")} = $1 and ${executionsSql.name("workflowId")} = $2))::int`;


/** The run to act on, locked for the transaction: runId's, or the workflow's current run. */
export async function lockRun(tx: Tx, namespaceId: string, workflowId: string, runId: string): Promise<ExecutionRow | undefined> {
  const [row] = await runStatement(tx, lockRunText(Boolean(runId)), runId ? [namespaceId, workflowId, runId] : [namespaceId, workflowId]);
  return row && executionsSql.fromRow(row);
}

/** Events of one run with ids in [from, before), in order, at most limit of them. */
export async function readRunEvents(
  db: Db | Tx,
  run: { namespaceId: string; workflowId: string; runId: string },
  from: number,
  { before, limit }: { before?: number | SQL<number>; limit?: number } = {},
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

const claimOrFailText =
  `insert into ${requestsSql.table} (${requestsSql.name("namespaceId")}, ${requestsSql.name("workflowId")}, ${requestsSql.name("requestId")}, ${requestsSql.name("runId")}, ${requestsSql.name("eventId")}) ` +
  `values ($1, $2, $3, $4, $5)`;

/**
 * Claims requestId with a statement that fails (unique violation, 23505) when an earlier
 * write holds it, so the claim vetoes its transaction's commit from inside (see pipelined-tx.ts).
 */
export function claimRequestOrFail(
  tx: Tx,
  r: { namespaceId: string; workflowId: string; requestId: string; runId: string; eventId: number },
): Promise<unknown> {
  return runStatement(tx, claimOrFailText, [r.namespaceId, r.workflowId, r.requestId, r.runId, r.eventId]);
}

/** One event to append; version and time are the write's. */
export interface NewEvent {
  attributes: EventAttributes;
}

/** An event's stored columns, the run's key apart. */
export interface EventColumns {
  eventId: number;
  version: number;
  eventTime: Date;
  eventType: string;
  attributes: Record<string, unknown>;
}

// Writers below prepare their parameters before returning, so a failure throws before any
// statement is issued: a pipelined transaction (pipelined-tx.ts) must never commit half a write.
const EVENT_COLUMNS = ["namespaceId", "workflowId", "runId", "eventId", "version", "eventTime", "eventType", "attributes"] as const;
const insertEventsText = textCache((rows: number) =>
  `insert into ${eventsSql.table} (${EVENT_COLUMNS.map(eventsSql.name).join(", ")}) values ${valuesList(rows, EVENT_COLUMNS.length)}`);
const eventParams = (key: RunKey, e: EventColumns) => [
  key.namespaceId, key.workflowId, key.runId, e.eventId, e.version, eventsSql.param("eventTime", e.eventTime), e.eventType, eventsSql.param("attributes", e.attributes),
];

/**
 * insertEvents of a write's few events (at most a thousand) as a part of a composite
 * statement, inserted once the statement's expression named after has returned a row (so
 * its write, and the locks it takes, come first); its parameters are prepared here.
 */
export function insertEventsPart(key: RunKey, firstEventId: number, version: number, time: Date, events: NewEvent[], after: string): StatementPart {
  if (events.length > ROWS_PER_INSERT) throw new Error(`insertEventsPart: ${events.length} events, more than one statement takes`);
  const rows = eventRows(firstEventId, version, time, events);
  return { ctes: [["events", insertEventsAfterText(after)(rows.length)]], columns: [], params: rows.flatMap((e) => eventParams(key, e)) };
}

// The padded insert's text for exactly rows rows (no null rows), behind a condition.
const insertEventsAfterText = textCache((after: string) => paddedInsertText(eventsSql, EVENT_COLUMNS, ` and exists (select 1 from ${after})`));

/**
 * claimRequestOrFail as a part of a composite statement: it fails the statement (unique
 * violation) when an earlier write holds the request id. Its column makes it run when the
 * statement's row reaches it (PostgreSQL computes the columns in order), before the writes of
 * the parts after it: a retried request then fails on its claim (an answer, the first
 * write's), not on the rows the first write holds.
 */
export function claimRequestPart(r: { namespaceId: string; workflowId: string; requestId: string; runId: string; eventId: number }): StatementPart {
  return { ctes: [["claim", `${claimOrFailText} returning 1`]], columns: [["claimed", "(select count(*) from claim)"]], params: [r.namespaceId, r.workflowId, r.requestId, r.runId, r.eventId] };
}

/** Inserts a run's event rows (a write's few), one statement per thousand. */
export function insertEventRows(tx: Tx, key: RunKey, rows: EventColumns[]): Promise<unknown> {
  return Promise.all(chunksOf(rows, ROWS_PER_INSERT).map((chunk) => runStatement(tx, insertEventsText(chunk.length), chunk.flatMap((e) => eventParams(key, e)))));
}

/**
 * The insert into codec's table of `rows` rows of columns, written for paddedRows of them:
 * the padding's null rows are passed over (a real row's first column is never null). suffix
 * follows the statement (e.g. its on conflict clause).
 */
function paddedInsertText<K extends string>(codec: { table: string; name: (k: K) => string; sqlType: (k: K) => string }, columns: readonly K[], suffix = "") {
  return textCache((rows: number) => {
    const names = columns.map(codec.name).join(", ");
    return `insert into ${codec.table} (${names}) select * from (values ${valuesList(rows, columns.length, columns.map(codec.sqlType))}) as v(${names}) ` +
      `where v.${codec.name(columns[0]!)} is not null${suffix}`;
  });
}

/**
 * Inserts rows of any number (a replicated page's: its count changes from page to page),
 * written for paddedRows of them (see paddedChunks). textOf(rows) inserts the rows' non-null
 * ones; paramsOf gives a row's width parameters.
 */
function paddedInsert<R>(tx: Tx, rows: R[], width: number, textOf: (rows: number) => string, paramsOf: (row: R) => unknown[]): Promise<unknown> {
  return Promise.all(paddedChunks(rows).map(({ chunk, rows: padded }) => runStatement(tx, textOf(padded), padRows(chunk.flatMap(paramsOf), padded, width))));
}

/**
 * paddedInsert of at most one chunk (1,024 rows) as a part of a composite statement, its
 * expression called name; undefined for more rows, or none.
 */
function paddedInsertPart<R>(name: string, rows: R[], width: number, textOf: (rows: number) => string, paramsOf: (row: R) => unknown[]): StatementPart | undefined {
  const [first, more] = paddedChunks(rows);
  if (!first || more) return undefined;
  return { ctes: [[name, textOf(first.rows)]], columns: [], params: padRows(first.chunk.flatMap(paramsOf), first.rows, width) };
}

const insertRunsEventsText = paddedInsertText(eventsSql, EVENT_COLUMNS);

/** Inserts event rows of any runs (a replicated page's). */
export function insertRunsEventRows(tx: Tx, rows: (EventColumns & { key: RunKey })[]): Promise<unknown> {
  return paddedInsert(tx, rows, EVENT_COLUMNS.length, insertRunsEventsText, (e) => eventParams(e.key, e));
}

/** insertRunsEventRows of at most 1,024 rows as a part of a composite statement; undefined for more, or none. */
export function insertRunsEventRowsPart(rows: (EventColumns & { key: RunKey })[]): StatementPart | undefined {
  return paddedInsertPart("run_events", rows, EVENT_COLUMNS.length, insertRunsEventsText, (e) => eventParams(e.key, e));
}

/** Inserts new events numbered from firstEventId, at the write's version and time; returns the version history after them. */
export function insertEvents(
  tx: Tx,
  key: RunKey,
  firstEventId: number,
  version: number,
  time: Date,
  events: NewEvent[],
  history: VersionHistoryItem[],
): Promise<VersionHistoryItem[]> {
  const after = extendVersionHistory(history, firstEventId + events.length - 1, version);
  return insertEventRows(tx, key, eventRows(firstEventId, version, time, events)).then(() => after);
}

/** The stored columns of new events numbered from firstEventId, at the write's version and time. */
export const eventRows = (firstEventId: number, version: number, time: Date, events: NewEvent[]): EventColumns[] =>
  events.map((e, i) => ({
    eventId: firstEventId + i, version, eventTime: time, eventType: eventTypeName(e.attributes), attributes: attributesToJson(e.attributes),
  }));

const REQUEST_COLUMNS = ["namespaceId", "workflowId", "runId", "requestId", "eventId"] as const;
const insertRequestIdsText = paddedInsertText(requestsSql, REQUEST_COLUMNS, " on conflict do nothing");

/** Records where requests' events went, for any runs; the first holder of a request id keeps it (as a claim does). */
export function insertRunsRequestIds(tx: Tx, ids: { key: RunKey; requestId: string; eventId: number }[]): Promise<unknown> {
  return paddedInsert(tx, ids, REQUEST_COLUMNS.length, insertRequestIdsText, requestIdParams);
}

/** insertRunsRequestIds of at most 1,024 ids as a part of a composite statement; undefined for more, or none. */
export function insertRunsRequestIdsPart(ids: { key: RunKey; requestId: string; eventId: number }[]): StatementPart | undefined {
  return paddedInsertPart("run_request_ids", ids, REQUEST_COLUMNS.length, insertRequestIdsText, requestIdParams);
}

const requestIdParams = (r: { key: RunKey; requestId: string; eventId: number }) => [r.key.namespaceId, r.key.workflowId, r.key.runId, r.requestId, r.eventId];

/** Version history after appending events up to lastEventId at version (DESIGN.md section 4). */
export function extendVersionHistory(history: VersionHistoryItem[], lastEventId: number, version: number): VersionHistoryItem[] {
  const last = history.at(-1);
  if (last && last.version === version) return [...history.slice(0, -1), { eventId: lastEventId, version }];
  if (last && version < last.version) throw new Error(`version ${version} is lower than the history's ${last.version}`);
  return [...history, { eventId: lastEventId, version }];
}

type RunField = keyof ExecutionRow & string;
const saveRunText = textCache((fields: string) => {
  const set = fields.split(",") as RunField[];
  const assignments = [...set, "dbVersion" as const].map((k, i) => `${executionsSql.name(k)} = $${i + 1}`).join(", ");
  const n = set.length + 1;
  return `update ${executionsSql.table} set ${assignments} where ${runKeyWhere(n + 1)} and ${executionsSql.name("dbVersion")} = $${n + 4} returning ${executionsSql.name("runId")}`;
});

/** Saves the run's new state if nobody else wrote it since it was read. */
export function saveRun(tx: Tx, prev: ExecutionRow, next: Partial<ExecutionRow>): Promise<void> {
  const fields = (Object.keys(next) as RunField[]).filter((k) => k !== "dbVersion" && next[k] !== undefined);
  const params = [
    ...fields.map((k) => executionsSql.param(k, next[k])),
    prev.dbVersion + 1, prev.namespaceId, prev.workflowId, prev.runId, prev.dbVersion,
  ];
  return runStatement(tx, saveRunText(fields.join(",")), params).then((rows) => {
    // Never under the row lock every writer takes first (lockRun); a veto here would come after a pipelined COMMIT.
    if (rows.length !== 1) throw new Error(`execution ${prev.workflowId}/${prev.runId} changed concurrently`);
  });
}

/** Inserts a run's row; issued at once (pipelined transactions). */
export function insertExecution(tx: Tx, row: typeof executions.$inferInsert): Promise<unknown> {
  return executionsSql.insert(tx, row);
}

/** A new run's row with every column given but db_version (its default): what insertExecutions takes. */
export type NewExecutionRow = Omit<ExecutionRow, "dbVersion">;

const NEW_RUN_COLUMNS = (Object.keys(getTableColumns(executions)) as (keyof ExecutionRow)[]).filter((k) => k !== "dbVersion");
const insertExecutionsText = paddedInsertText(executionsSql, NEW_RUN_COLUMNS);

/**
 * Inserts the rows of new runs of any number (a replicated page's), one statement per 1,024: a
 * catch-up page of 4,000 starts took a statement per run.
 */
export function insertExecutions(tx: Tx, rows: NewExecutionRow[]): Promise<unknown> {
  return paddedInsert(tx, rows, NEW_RUN_COLUMNS.length, insertExecutionsText, (r) => NEW_RUN_COLUMNS.map((k) => executionsSql.param(k, r[k])));
}

/** The expression of insertExecutionPart: a row when the run's row went in. */
export const NEW_RUN = "new_run";

/** insertExecution as a part of a composite statement (NEW_RUN). */
export function insertExecutionPart(row: typeof executions.$inferInsert): StatementPart {
  return executionsSql.insertPart(NEW_RUN, row);
}

/** insertTimer as a part of a composite statement. */
export function insertTimerPart(row: typeof timerTasks.$inferInsert): StatementPart {
  return timersSql.insertPart("new_timer", row);
}

/**
 * For a start sent in one round trip, a part of its statement (composite) that fails it (a
 * guard, see DIVISION_BY_ZERO) if the workflow id has any run, open or closed, committed
 * before the statement began; a start committed meanwhile meets the insert's unique index
 * instead.
 */
export function noRunPart(namespaceId: string, workflowId: string): StatementPart {
  return { ctes: [], columns: [["no_run", NO_RUN]], params: [namespaceId, workflowId] };
}

/** Inserts a timer task; issued at once (pipelined transactions). */
export function insertTimer(tx: Tx, row: typeof timerTasks.$inferInsert): Promise<unknown> {
  return timersSql.insert(tx, row);
}

/** A timer task with every column given: what insertTimers takes. */
export type TimerRow = typeof timerTasks.$inferSelect;

const TIMER_COLUMNS = Object.keys(getTableColumns(timerTasks)) as (keyof TimerRow)[];
const insertTimersText = paddedInsertText(timersSql, TIMER_COLUMNS);

/**
 * Inserts timer tasks of any number (a replicated page's new runs'), one statement per 1,024:
 * a catch-up page of 4,000 starts with a timeout took a statement per run.
 */
export function insertTimers(tx: Tx, rows: TimerRow[]): Promise<unknown> {
  return paddedInsert(tx, rows, TIMER_COLUMNS.length, insertTimersText, (r) => TIMER_COLUMNS.map((k) => timersSql.param(k, r[k])));
}

const deleteTimersText =
  `delete from ${timersSql.table} where ${timersSql.name("namespaceId")} = $1 and ${timersSql.name("workflowId")} = $2 and ${timersSql.name("runId")} = $3`;

/** Removes the run's pending timers (the run closed). */
export function deleteTimers(tx: Tx, key: { namespaceId: string; workflowId: string; runId: string }): Promise<unknown> {
  return runStatement(tx, deleteTimersText, [key.namespaceId, key.workflowId, key.runId]);
}

// The runs in key order, each one's timers locked in turn (by id) through the index by run, then
// deleted. Written for paddedRows(n) runs: the null rows after the n are passed over.
const deleteRunsTimersText = textCache((rows: number) =>
  `delete from ${timersSql.table} where ${timersSql.name("id")} in (select t.id from ${keysInOrder(rows, ["ns", "wf", "run"], "k")} ` +
  `cross join lateral (select ${timersSql.name("id")} as id from ${timersSql.table} where ${timersSql.name("namespaceId")} = k.ns ` +
  `and ${timersSql.name("workflowId")} = k.wf and ${timersSql.name("runId")} = k.run order by ${timersSql.name("id")} for update) as t)`);

/**
 * deleteTimers for the runs of any number (a replicated page's that close), one statement per
 * 1,024: a catch-up page of 4,000 closes took a statement per run. Each statement locks the
 * runs' timers in key order, as lockCurrentRuns locks runs, and finds them through the index by
 * run (a semi join on the keys read every timer). The caller holds the runs' locks already
 * (lockRunKeys, lockRuns): a run's row lock comes before its timers', as in deleteTimersPart.
 */
export function deleteRunsTimers(tx: Tx, keys: RunKey[]): Promise<unknown> {
  return Promise.all(paddedChunks(keys).map(({ chunk, rows }) =>
    runStatement(tx, deleteRunsTimersText(rows), padRows(chunk.flatMap((k) => [k.namespaceId, k.workflowId, k.runId]), rows, 3))));
}

/**
 * deleteTimers as a part of a composite statement, run once the expression named after (the
 * run's saved row) has a row: the run's row lock comes before the timers', as in a write
 * from a read.
 */
export function deleteTimersPart(key: { namespaceId: string; workflowId: string; runId: string }, after: string): StatementPart {
  return { ctes: [["gone_timers", `${deleteTimersText} and exists (select 1 from ${after})`]], columns: [], params: [key.namespaceId, key.workflowId, key.runId] };
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
