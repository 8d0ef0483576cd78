import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { LoadResult } from "./load";

/** One line of the results table. */
export interface ResultRow {
  store: "pglite" | "postgres";
  /** "start", "signal", or "insert (baseline)". */
  op: string;
  clients: number;
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  /** ops/s over the raw insert baseline's at the same client count; null without one. */
  ratioVsBaseline: number | null;
  firstError?: string;
}

export const BASELINE_OP = "insert (baseline)";

/** A table row from a load result. */
export function rowOf(store: ResultRow["store"], op: string, r: LoadResult): ResultRow {
  return {
    store, op, clients: r.clients, opsPerSec: r.opsPerSec, p50Ms: r.latencyMs.p50, p99Ms: r.latencyMs.p99,
    errors: r.errors, ratioVsBaseline: null, ...(r.firstError ? { firstError: r.firstError } : {}),
  };
}

/** Fills ratioVsBaseline of every tern row that has a baseline at its client count. */
export function withRatios(rows: ResultRow[]): ResultRow[] {
  const baseline = new Map(rows.filter((r) => r.op === BASELINE_OP).map((r) => [r.clients, r.opsPerSec]));
  return rows.map((r) => {
    const b = baseline.get(r.clients);
    return r.op === BASELINE_OP || !b ? r : { ...r, ratioVsBaseline: r.opsPerSec / b };
  });
}

const fixed = (n: number, digits: number) => (Number.isFinite(n) ? n.toFixed(digits) : "-");

/** The rows as an aligned plain-text table. */
export function formatTable(rows: readonly ResultRow[]): string {
  const header = ["store", "op", "clients", "ops/s", "p50 ms", "p99 ms", "errors", "ratio vs baseline"];
  const body = rows.map((r) => [
    r.store, r.op, String(r.clients), fixed(r.opsPerSec, 0), fixed(r.p50Ms, 2), fixed(r.p99Ms, 2), String(r.errors),
    r.ratioVsBaseline === null ? "-" : `${(r.ratioVsBaseline * 100).toFixed(1)}%`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...body.map(line)].join("\n");
}

/** Writes the report as pretty JSON, creating the directory. */
export function writeJsonReport(path: string, report: unknown): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify(report, null, 2)}\n`);
}
