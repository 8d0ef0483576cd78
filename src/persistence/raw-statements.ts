import { getTableColumns, getTableName, type Column, type Table } from "drizzle-orm";
import { pgErrorOf } from "../errors";
import type { Db, Tx } from "./database";

/**
 * SQLSTATE of a guard that failed: statements whose condition must hold divide by zero
 * when it does not (`select 1 / (condition)::int`), so the failure aborts the transaction
 * from inside, even when its COMMIT is already on the way (pipelined-tx.ts).
 */
export const DIVISION_BY_ZERO = "22012";

/** A row as the driver returns it: database column names, driver values. */
export type DriverRow = Record<string, unknown>;

/**
 * Runs fixed SQL text on db or tx without drizzle's query builder. The hot write path's
 * statements are built once per shape: building them per call with the builder was a
 * fifth of a write's CPU. Named, so postgres.js prepares each text once per connection.
 */
export async function runStatement(db: Db | Tx, text: string, params: unknown[]): Promise<DriverRow[]> {
  const refused = paramsRefusal(params);
  if (refused) {
    (db._.session as { refuse?: (e: Error) => void }).refuse?.(refused);
    throw refused;
  }
  const result = await db._.session.prepareQuery({ sql: text, params }, undefined, "tern", false).execute();
  return rowsOf(result);
}

/** Both drivers' execute results, as plain rows: postgres.js returns the rows as the result, PGlite under rows. */
export function rowsOf(result: unknown): DriverRow[] {
  const r = result as { rows?: DriverRow[] };
  return Array.isArray(r.rows) ? r.rows : (result as DriverRow[]);
}

/** Most parameters postgres.js takes in one statement. */
export const MAX_PARAMETERS = 65_533;

/**
 * Why postgres.js would refuse params, if it would: more than MAX_PARAMETERS, or an undefined
 * one. It finds out while it builds the statement, after the statement took its place in the
 * connection's queue, and then fails the statement ahead of it, and never settles the ones
 * behind (porsager/postgres#1082, open in 3.4.9): in a pipelined transaction the statements
 * after it, COMMIT included, would go out and commit without it. So runStatement refuses them
 * first, before the driver sees them, and tells a pipelined transaction (its session's
 * refuse), which then rolls back.
 */
export function paramsRefusal(params: readonly unknown[]): Error | undefined {
  if (params.length > MAX_PARAMETERS) return new Error(`statement not sent: ${params.length} parameters, more than the ${MAX_PARAMETERS} a statement takes`);
  const i = params.indexOf(undefined);
  return i < 0 ? undefined : new Error(`statement not sent: parameter $${i + 1} is undefined`);
}

/**
 * runStatement for a guard (see DIVISION_BY_ZERO): when its condition does not hold, it
 * rejects with failure() in place of the driver's error; other errors pass through.
 */
export async function runGuard(db: Db | Tx, text: string, params: unknown[], failure: () => Error): Promise<DriverRow[]> {
  try {
    return await runStatement(db, text, params);
  } catch (e) {
    throw pgErrorOf(e).code === DIVISION_BY_ZERO ? failure() : e;
  }
}

/**
 * A part of a composite statement: common table expressions, and columns of the statement's
 * one row (expressions, which may read them), written with placeholders $1.. of their own
 * for params. A data-modifying expression runs to completion whether a column reads it or
 * not; a select runs only where a column reads it, so a guard is a column.
 */
export interface StatementPart {
  ctes: readonly (readonly [name: string, body: string])[];
  columns: readonly (readonly [name: string, expression: string])[];
  params: unknown[];
}

const compositeTexts = new Map<string, string>();

/**
 * The parts as one statement, their placeholders renumbered in order: a write of several
 * statements costs PostgreSQL one Sync, and so one answer on the socket, where each
 * statement of a transaction costs one (PostgreSQL flushes at every Sync). Every part sees
 * the statement's one snapshot and none another's changes, so parts must not depend on each
 * other's writes; any part's failure fails all. Names must be distinct across the parts.
 */
export function composite(parts: readonly StatementPart[]): { text: string; params: unknown[] } {
  const key = parts.map((p) => p.ctes.map(([n, b]) => `${n}\u0000${b}`).join("\u0001") + "\u0002" + p.columns.map(([n, e]) => `${n}\u0000${e}`).join("\u0001") + `\u0002${p.params.length}`).join("\u0003");
  let text = compositeTexts.get(key);
  if (text === undefined) {
    const ctes: string[] = [];
    const columns: string[] = [];
    const names = new Set<string>();
    let offset = 0;
    for (const p of parts) {
      const renumber = (t: string) => t.replace(/\$(\d+)/g, (_, d: string) => `$${Number(d) + offset}`);
      for (const [n] of [...p.ctes, ...p.columns]) {
        if (names.has(n)) throw new Error(`composite: the name ${n} is taken by another part`);
        names.add(n);
      }
      for (const [n, body] of p.ctes) ctes.push(`${n} as (${renumber(body)})`);
      for (const [n, e] of p.columns) columns.push(`${renumber(e)} as ${n}`);
      offset += p.params.length;
    }
    text = `${ctes.length ? `with ${ctes.join(", ")} ` : ""}select ${columns.length ? columns.join(", ") : "1 as done"}`;
    compositeTexts.set(key, text);
  }
  return { text, params: parts.flatMap((p) => p.params) };
}

/**
 * A table's columns for hand-written statements: quoted names, and values converted the
 * way drizzle converts them (dates, jsonb, bigint as number), so rows read here equal
 * rows read through the query builder.
 */
export function tableCodec<T extends Table>(table: T) {
  type Key = keyof T["$inferSelect"] & string;
  const columns = Object.entries(getTableColumns(table)) as [Key, Column][];
  const byKey = new Map(columns);
  const column = (key: Key): Column => {
    const c = byKey.get(key);
    if (!c) throw new Error(`table ${getTableName(table)} has no column ${key}`);
    return c;
  };
  const param = (key: Key, value: unknown): unknown => (value === null || value === undefined ? null : column(key).mapToDriverValue(value));
  const insertText = textCache((keys: string) => {
    const names = keys.split(",").map((k) => quote(column(k as Key).name));
    return `insert into ${quote(getTableName(table))} (${names.join(", ")}) values ${valuesList(1, names.length)}`;
  });
  return {
    table: quote(getTableName(table)),
    /** Every column, quoted, in declaration order, qualified by alias when given: a select list. */
    all: (alias?: string) => columns.map(([, c]) => (alias ? `${alias}.${quote(c.name)}` : quote(c.name))).join(", "),
    /** The quoted database name of key's column. */
    name: (key: Key) => quote(column(key).name),
    /** The SQL type of key's column, for casts. */
    sqlType: (key: Key) => column(key).getSQLType(),
    /** value as a parameter of key's column. */
    param,
    /**
     * Inserts row (its defined fields; the others take their column defaults) with a
     * statement built once per set of fields. Issued at once, for pipelined transactions.
     */
    insert(db: Db | Tx, row: Partial<T["$inferInsert"]>): Promise<DriverRow[]> {
      const keys = (Object.keys(row) as Key[]).filter((k) => (row as Record<string, unknown>)[k] !== undefined);
      const text = insertText(keys.join(","));
      return runStatement(db, text, keys.map((k) => param(k, (row as Record<string, unknown>)[k])));
    },
    /** insert as a part of a composite statement, its expression called name (returning a row per row inserted). */
    insertPart(name: string, row: Partial<T["$inferInsert"]>): StatementPart {
      const keys = (Object.keys(row) as Key[]).filter((k) => (row as Record<string, unknown>)[k] !== undefined);
      return { ctes: [[name, `${insertText(keys.join(","))} returning 1`]], columns: [], params: keys.map((k) => param(k, (row as Record<string, unknown>)[k])) };
    },
    /** A driver row as drizzle's select of the whole table would give it. */
    fromRow(row: DriverRow): T["$inferSelect"] {
      const out: Record<string, unknown> = {};
      for (const [key, c] of columns) {
        const v = row[c.name];
        out[key] = v === null || v === undefined ? null : c.mapFromDriverValue(v);
      }
      return out as T["$inferSelect"];
    },
  };
}

const quote = (identifier: string) => `"${identifier.replaceAll('"', '""')}"`;

/**
 * `($1, $2), ($3, $4)`: rows placeholders for a multi-row insert. With types, the first
 * row's are cast (`$1::text`), which types the columns of a VALUES list that no INSERT
 * column list types.
 */
export function valuesList(rows: number, width: number, types?: readonly string[]): string {
  return Array.from({ length: rows }, (_, r) =>
    `(${Array.from({ length: width }, (_, c) => `$${1 + r * width + c}${r === 0 && types ? `::${types[c]}` : ""}`).join(", ")})`).join(", ");
}

/**
 * The keys of a padded list of text keys (valuesList of rows rows, one column per name), each
 * once and in key order, the null padding passed over: a subquery `(...) as alias` to join
 * each key's rows to laterally, so that rows are locked in key order and found through the
 * index by key (a semi join on the list was planned as a read of the whole table).
 */
export function keysInOrder(rows: number, names: readonly string[], alias: string): string {
  const columns = names.join(", ");
  return `(select distinct ${columns} from (values ${valuesList(rows, names.length, names.map(() => "text"))}) as v(${columns}) ` +
    `where ${names[0]} is not null order by ${columns}) as ${alias}`;
}

/**
 * The rows a statement over many rows is written for: n rounded up to a power of two, the
 * rest null rows the statement passes over (padRows). A text per row count had the
 * connections of a busy receiver preparing a new statement for most pages (a round trip,
 * parsed and planned), and every PostgreSQL backend keeping each one: their memory grew
 * without end. Now a connection prepares about a dozen texts per statement.
 */
export const paddedRows = (n: number): number => 2 ** Math.ceil(Math.log2(Math.max(n, 1)));

/** params (whole rows of width values) and null rows after them, up to rows. */
export function padRows(params: unknown[], rows: number, width: number): unknown[] {
  return params.concat(new Array(rows * width - params.length).fill(null));
}

/** Most rows per padded statement: a power of two, and with up to 63 values a row, within MAX_PARAMETERS. */
export const PADDED_CHUNK = 1024;

/**
 * Rows per multi-row insert that is not padded: with up to 65 columns, within MAX_PARAMETERS.
 * A history can hold tens of thousands of events (limits.historyCountLimitError), so an
 * insert of a run's events, or of what they carry, goes in chunks of this many.
 */
export const ROWS_PER_INSERT = 1000;

/** items in order, at most size at a time: a statement's worth each. */
export function chunksOf<R>(items: readonly R[], size: number): R[][] {
  const out: R[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** chunksOf at most 1,024 items, each with the padded row count its statement is written for (paddedRows). */
export function paddedChunks<R>(items: readonly R[]): { chunk: R[]; rows: number }[] {
  return chunksOf(items, PADDED_CHUNK).map((chunk) => ({ chunk, rows: paddedRows(chunk.length) }));
}

/** Memoizes a statement text by its shape (e.g. the number of rows or the set columns), keyed by keyOf. */
export function textCache<K, T = string>(build: (shape: K) => T, keyOf: (shape: K) => unknown = (shape) => shape): (shape: K) => T {
  const texts = new Map<unknown, T>();
  return (shape) => {
    const key = keyOf(shape);
    let t = texts.get(key);
    if (t === undefined) texts.set(key, (t = build(shape)));
    return t;
  };
}
