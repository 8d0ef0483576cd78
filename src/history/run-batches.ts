import type { Tx } from "../persistence/database";
import { composite, keysInOrder, PADDED_CHUNK, paddedChunks, paddedRows, padRows, runGuard, runStatement, tableCodec, textCache, valuesList, type StatementPart } from "../persistence/raw-statements";
import { executions } from "../persistence/schema";
import { runKeyText } from "./branch-store";
import { CURRENT_RUN_ORDER, type ExecutionRow, type RunKey } from "./execution-store";

/**
 * Statements that act on many runs at once, for a replicated page: its cost on both sides
 * of the connection goes with the statements it issues more than with the rows they touch.
 * Locks are taken in key order, so two such statements never wait on each other in a cycle.
 */

const executionsSql = tableCodec(executions);
const KEY = ["namespaceId", "workflowId", "runId"] as const;
const keyList = (alias?: string) => KEY.map((k) => (alias ? `${alias}.` : "") + executionsSql.name(k)).join(", ");
const keyParams = (keys: RunKey[]) => keys.flatMap((k) => [k.namespaceId, k.workflowId, k.runId]);

// Written for paddedRows(n) rows: the null rows after the n lock nothing and match no run.
const lockKeysText = textCache((rows: number) =>
  `select pg_advisory_xact_lock(hashtextextended(k, 0)) from (select k from (values ${valuesList(rows, 1, ["text"])}) as v(k) where k is not null order by k) as s`);

/**
 * lockRunKey for every key, in one statement: the order that keeps two pages from waiting on
 * each other in a cycle is the statement's. The other statements here, issued after it, may
 * take their rows in several (paddedChunks). Padded, it takes at most 32,768 keys: runStatement
 * refuses more (paramsRefusal), and a pull of that many runs is then applied page by page.
 */
export function lockRunKeys(tx: Tx, keys: RunKey[]): Promise<unknown> {
  if (!keys.length) return Promise.resolve();
  const rows = paddedRows(keys.length);
  return runStatement(tx, lockKeysText(rows), padRows(keys.map(runKeyText), rows, 1));
}

const lockKeysColumn = textCache((rows: number) => `(select count(*) from (${lockKeysText(rows)}) as l)`);

/**
 * lockRunKeys as a part of a composite statement, for at most one padded chunk of keys
 * (PADDED_CHUNK, as saveRunsPart; undefined for more): its column takes the locks, in key
 * order, when PostgreSQL computes it (columns are computed in order, the writing expressions
 * after them), so the parts whose columns come after it and the writes come after the locks. The statement's snapshot is older than the locks: parts
 * after it must not rely on reads, as a save's db_version comparison and an insert's unique
 * index do not (PostgreSQL checks both against the row as it stands when it gets the row).
 */
export function lockRunKeysPart(keys: RunKey[]): StatementPart | undefined {
  if (!keys.length || keys.length > PADDED_CHUNK) return undefined;
  const rows = paddedRows(keys.length);
  return { ctes: [], columns: [["run_keys_locked", lockKeysColumn(rows)]], params: padRows(keys.map(runKeyText), rows, 1) };
}

// The runs in key order, each one's row locked in turn through the primary key, as lockRun locks
// it. Written for paddedRows(n) runs: the null rows after the n are passed over.
const lockRunsText = textCache((rows: number) =>
  `select r.* from ${keysInOrder(rows, ["ns", "wf", "run"], "k")} cross join lateral (select ${executionsSql.all()} from ${executionsSql.table} ` +
  `where ${executionsSql.name("namespaceId")} = k.ns and ${executionsSql.name("workflowId")} = k.wf and ${executionsSql.name("runId")} = k.run for update) as r`);

/**
 * The rows of the runs that exist among keys, locked for the transaction, by runKeyText; one
 * statement (per 1,024 keys). Each key is looked up on its own, as lockCurrentRuns does: a semi
 * join of executions on the keys (`where (key) in (values ...)`) was planned, for a full
 * statement, as a read of every run up to some 150,000 of them (1,024 index lookups cost the
 * planner more), so its cost grew with the table instead of the keys.
 */
export async function lockRuns(tx: Tx, keys: RunKey[]): Promise<Map<string, ExecutionRow>> {
  const found = await Promise.all(paddedChunks(keys).map(({ chunk, rows }) => runStatement(tx, lockRunsText(rows), padRows(keyParams(chunk), rows, KEY.length))));
  return new Map(found.flat().map((r) => {
    const run = executionsSql.fromRow(r);
    return [runKeyText(run), run];
  }));
}

/** A workflow's key, whose current run lockCurrentRuns finds. */
export type WorkflowKey = { namespaceId: string; workflowId: string };

/** A workflow's key as one string, a map key (a namespace id holds no "/"). */
export const workflowKeyText = (key: WorkflowKey) => `${key.namespaceId}/${key.workflowId}`;

// Workflows in key order, each one's current run locked in turn, as lockRun(tx, ns, wf, "") locks it.
const lockCurrentRunsText = textCache((rows: number) =>
  `select c.* from ${keysInOrder(rows, ["ns", "wf"], "w")} cross join lateral (select ${executionsSql.all()} from ${executionsSql.table} where ${executionsSql.name("namespaceId")} = w.ns ` +
  `and ${executionsSql.name("workflowId")} = w.wf order by ${CURRENT_RUN_ORDER} limit 1 for update) as c`);

/**
 * Each workflow's current run (lockRun with no run id), locked for the transaction, by
 * workflowKeyText; a workflow without runs is absent. One statement per 1,024 workflows: a
 * catch-up page of 4,000 new runs read each one's workflow in a statement of its own, 5 s of
 * a 10 s apply on a loaded 2-core machine.
 */
export async function lockCurrentRuns(tx: Tx, workflows: WorkflowKey[]): Promise<Map<string, ExecutionRow>> {
  const distinct = [...new Map(workflows.map((w) => [workflowKeyText(w), w])).values()];
  const found = await Promise.all(paddedChunks(distinct).map(({ chunk, rows }) =>
    runStatement(tx, lockCurrentRunsText(rows), padRows(chunk.flatMap((w) => [w.namespaceId, w.workflowId]), rows, 2))));
  return new Map(found.flat().map((r) => {
    const run = executionsSql.fromRow(r);
    return [workflowKeyText(run), run];
  }));
}

/** A saved run had changed since it was read (its db_version moved on). */
export class StaleRunError extends Error {
  override name = "StaleRunError";
}

type RunField = keyof ExecutionRow & string;

// The saves are joined to executions as a nested loop, each run's row found through the primary
// key by its key (as lockRuns looks keys up) and updated where it was found. Planned on the
// number of saves, the join read every run below some 150,000 of them for 1,000 saves (1,024
// index lookups cost the planner more than a Seq Scan and a hash join); the range on db_version,
// which every saved run's is in and the padding's null is not, is estimated (a VALUES list has
// no statistics) to keep 0.5% of the saves, which the planner looks up through the index in any
// table of more than a few hundred runs. A run updated since the statement's snapshot (every
// update moves its db_version on) is not saved: PostgreSQL checks the conditions again on its
// newest version, whose db_version is not the one read, and the statement fails.
const saveRunsCte = textCache(({ fields, rows }: { fields: RunField[]; rows: number }) => {
  const columns: RunField[] = [...KEY, "dbVersion", ...fields];
  const v = (c: RunField) => `v.${executionsSql.name(c)}`;
  const set = [...fields.map((c) => `${executionsSql.name(c)} = ${v(c)}`), `${executionsSql.name("dbVersion")} = ${v("dbVersion")} + 1`];
  const values = `(values ${valuesList(rows, columns.length, columns.map(executionsSql.sqlType))})`;
  const conditions = `(${keyList("e")}) = (${KEY.map(v).join(", ")}) and e.${executionsSql.name("dbVersion")} = ${v("dbVersion")}`;
  const fewSaves = `${v("dbVersion")} > 0 and ${v("dbVersion")} < ${2n ** 63n - 1n}`;
  return `update ${executionsSql.table} as e set ${set.join(", ")} from ${values} as v(${columns.map(executionsSql.name).join(", ")}) where ${conditions} and ${fewSaves} returning 1`;
}, ({ fields, rows }) => `${fields.join(",")}/${rows}`);

/**
 * saveRun for many runs that set the same fields, in one statement (per 1,024): each saves its new
 * state if nobody wrote it since it was read (its db_version). If one was, the statement
 * fails (a guard, see DIVISION_BY_ZERO), so a transaction committed in one round trip
 * from rows kept in memory rolls back instead.
 */
export function saveRuns(tx: Tx, saves: { prev: ExecutionRow; next: Partial<ExecutionRow> }[]): Promise<void> {
  if (!saves.length) return Promise.resolve();
  const stale = () => new StaleRunError(`one or more of ${saves.length} executions changed since they were read`);
  // Every chunk's parameters are prepared before the first statement goes out.
  const statements = paddedChunks(saves).map(({ chunk }) => composite([saveRunsPart(chunk)]));
  return Promise.all(statements.map(({ text, params }) => runGuard(tx, text, params, stale))).then(() => undefined);
}

/** The expression of saveRunsPart that returns a row per run saved: other parts may wait for it. */
export const SAVED_RUNS = "saved_runs";

/**
 * saveRuns of at most one chunk (1,024 runs) as a part of a composite statement: it fails the
 * statement (division by zero) if a run's db_version moved on. Its parameters are prepared
 * here, before any statement goes out (see pipelined-tx.ts).
 */
export function saveRunsPart(saves: { prev: ExecutionRow; next: Partial<ExecutionRow> }[]): StatementPart {
  const fieldsOf = (next: Partial<ExecutionRow>) => (Object.keys(next) as RunField[]).filter((k) => k !== "dbVersion" && next[k] !== undefined).sort();
  const fields = fieldsOf(saves[0]!.next);
  if (saves.some(({ next }) => fieldsOf(next).join() !== fields.join())) throw new Error("saveRuns: every run must set the same fields");
  const [first, more] = paddedChunks(saves);
  const { chunk, rows } = first!;
  if (more) throw new Error(`saveRunsPart: ${saves.length} runs, more than one statement takes`);
  const width = KEY.length + 1 + fields.length;
  const paramsOf = ({ prev, next }: (typeof saves)[number]) => [
    prev.namespaceId, prev.workflowId, prev.runId, prev.dbVersion, ...fields.map((k) => executionsSql.param(k, next[k])),
  ];
  return {
    ctes: [[SAVED_RUNS, saveRunsCte({ fields, rows })]],
    columns: [["saved", `1 / ((select count(*) from ${SAVED_RUNS}) = $${rows * width + 1})::int`]],
    params: [...padRows(chunk.flatMap(paramsOf), rows, width), chunk.length],
  };
}
