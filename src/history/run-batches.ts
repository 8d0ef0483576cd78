import type { Tx } from "../persistence/database";
import { runGuard, runStatement, tableCodec, textCache } from "../persistence/raw-statements";
import { executions } from "../persistence/schema";
import { runKeyText } from "./branch-store";
import type { ExecutionRow, RunKey } from "./execution-store";

/**
 * Statements that act on many runs at once, for a replicated page: its cost on both sides
 * of the connection goes with the statements it issues more than with the rows they touch.
 * Locks are taken in key order, so two such statements never wait on each other in a cycle.
 */

const executionsSql = tableCodec(executions);
const KEY = ["namespaceId", "workflowId", "runId"] as const;
const keyList = (alias?: string) => KEY.map((k) => (alias ? `${alias}.` : "") + executionsSql.name(k)).join(", ");

// Each statement's text is fixed: the rows go in one JSON parameter (tableCodec's recordset).
const LOCK_KEYS_TEXT =
  "select pg_advisory_xact_lock(hashtextextended(k, 0)) from (select k from json_array_elements_text($1::json) as v(k) order by k) as s";

/** lockRunKey for every key, in one statement. */
export function lockRunKeys(tx: Tx, keys: RunKey[]): Promise<unknown> {
  return keys.length ? runStatement(tx, LOCK_KEYS_TEXT, [JSON.stringify(keys.map(runKeyText))]) : Promise.resolve();
}

const LOCK_RUNS_TEXT =
  `select ${executionsSql.all()} from ${executionsSql.table} where (${keyList()}) in (select ${keyList("v")} from ${executionsSql.recordset(KEY, 1, "v")}) ` +
  `order by ${keyList()} for update`;

/** The rows of the runs that exist among keys, locked for the transaction, by runKeyText; one statement. */
export async function lockRuns(tx: Tx, keys: RunKey[]): Promise<Map<string, ExecutionRow>> {
  if (!keys.length) return new Map();
  const rows = await runStatement(tx, LOCK_RUNS_TEXT, executionsSql.rowParams(KEY, keys));
  return new Map(rows.map((r) => {
    const run = executionsSql.fromRow(r);
    return [runKeyText(run), run];
  }));
}

/** A saved run had changed since it was read (its db_version moved on). */
export class StaleRunError extends Error {
  override name = "StaleRunError";
}

type RunField = keyof ExecutionRow & string;
const saveRunsText = textCache((fields: RunField[]) => {
  const v = (c: RunField) => `v.${executionsSql.name(c)}`;
  const set = [...fields.map((c) => `${executionsSql.name(c)} = ${v(c)}`), `${executionsSql.name("dbVersion")} = ${v("dbVersion")} + 1`];
  return `with saved as (update ${executionsSql.table} as e set ${set.join(", ")} from ${executionsSql.recordset([...KEY, "dbVersion", ...fields], 1, "v")} ` +
    `where (${keyList("e")}) = (${KEY.map(v).join(", ")}) and e.${executionsSql.name("dbVersion")} = ${v("dbVersion")} returning 1) ` +
    `select 1 / (count(*) = $2)::int as saved from saved`;
}, (fields) => fields.join(","));

/**
 * saveRun for many runs that set the same fields, in one statement: each saves its new
 * state if nobody wrote it since it was read (its db_version). If one was, the statement
 * fails (a guard, see DIVISION_BY_ZERO), so a transaction committed in one round trip
 * from rows kept in memory rolls back instead.
 */
export function saveRuns(tx: Tx, saves: { prev: ExecutionRow; next: Partial<ExecutionRow> }[]): Promise<void> {
  if (!saves.length) return Promise.resolve();
  const fieldsOf = (next: Partial<ExecutionRow>) => (Object.keys(next) as RunField[]).filter((k) => k !== "dbVersion" && next[k] !== undefined).sort();
  const fields = fieldsOf(saves[0]!.next);
  if (saves.some(({ next }) => fieldsOf(next).join() !== fields.join())) throw new Error("saveRuns: every run must set the same fields");
  const params = executionsSql.rowParams([...KEY, "dbVersion", ...fields], saves.map(({ prev, next }) => ({
    ...next, namespaceId: prev.namespaceId, workflowId: prev.workflowId, runId: prev.runId, dbVersion: prev.dbVersion,
  })));
  return runGuard(tx, saveRunsText(fields), params, () => new StaleRunError(`one or more of ${saves.length} executions changed since they were read`));
}
