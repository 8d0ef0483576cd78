import { percentile } from "./percentiles";

/** A lag distribution, milliseconds. */
export interface LagSummary {
  count: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

/** Nearest-rank p50/p95/p99 and max of unsorted samples. */
export function lagSummary(samples: readonly number[]): LagSummary {
  const sorted = Array.from(Float64Array.from(samples).sort());
  return { count: sorted.length, p50: percentile(sorted, 50), p95: percentile(sorted, 95), p99: percentile(sorted, 99), max: sorted.at(-1) ?? Number.NaN };
}

/** One line of the figures table. */
export interface FigureRow {
  figure: string;
  value: number;
  unit: string;
  baseline?: { name: string; value: number };
}

/** value / baseline, or null without a usable baseline. */
export const ratioOf = (r: FigureRow): number | null =>
  r.baseline && Number.isFinite(r.baseline.value) && r.baseline.value !== 0 && Number.isFinite(r.value) ? r.value / r.baseline.value : null;

const num = (n: number) => (!Number.isFinite(n) ? "-" : Math.abs(n) >= 100 ? n.toFixed(0) : Math.abs(n) >= 10 ? n.toFixed(1) : n.toFixed(2));

/** The rows as an aligned plain-text table: figure, value, baseline, ratio. */
export function formatFigures(rows: readonly FigureRow[]): string {
  const header = ["figure", "value", "baseline", "ratio"];
  const body = rows.map((r) => {
    const ratio = ratioOf(r);
    return [r.figure, `${num(r.value)} ${r.unit}`, r.baseline ? `${num(r.baseline.value)} ${r.unit} (${r.baseline.name})` : "-", ratio === null ? "-" : `${ratio.toFixed(2)}x`];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 || i === 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...body.map(line)].join("\n");
}

/** A goal of the issue and whether this run met it. */
export interface GoalResult {
  goal: string;
  verdict: "PASS" | "MISS" | "N/A";
  detail: string;
}

/** What the goals are judged on; undefined/NaN figures give N/A. */
export interface GoalInputs {
  lagP99Ms?: number;
  logicalLagP99Ms?: number;
  /** Where both lags are measured from, when said in the goal lines (e.g. "both from the commit"). */
  lagFrom?: string;
  bApplyPerSec?: number;
  aSaturatedWritePerSec?: number;
  catchUpPerSec?: number;
  steadyPerSec?: number;
  gracefulFailoverMs?: number;
  lostAckedWrites?: number;
}

const ok = (...xs: (number | undefined)[]) => xs.every((x) => x !== undefined && Number.isFinite(x));

/** The goal lines of a bench's output, one a goal: verdict, goal, detail. */
export function formatGoals(goals: readonly GoalResult[]): string {
  return goals.map((g) => `  ${g.verdict.padEnd(4)}  ${g.goal}  (${g.detail})`).join("\n");
}

function judge(goal: string, inputs: (number | undefined)[], pass: () => boolean, detail: () => string): GoalResult {
  if (!ok(...inputs)) return { goal, verdict: "N/A", detail: "not measured in this run" };
  return { goal, verdict: pass() ? "PASS" : "MISS", detail: detail() };
}

/** The issue's goals, judged. */
export function evaluateGoals(g: GoalInputs): GoalResult[] {
  const f = (n: number | undefined) => num(n!);
  return [
    judge("lag p99 <= 50 ms at the steady rate", [g.lagP99Ms], () => g.lagP99Ms! <= 50, () => `p99 ${f(g.lagP99Ms)} ms${g.lagFrom ? `, ${g.lagFrom}` : ""}`),
    judge("lag p99 <= 2x logical replication p99", [g.lagP99Ms, g.logicalLagP99Ms], () => g.lagP99Ms! <= 2 * g.logicalLagP99Ms!,
      () => `${f(g.lagP99Ms)} ms vs 2 x ${f(g.logicalLagP99Ms)} ms${g.lagFrom ? `, ${g.lagFrom}` : ""}`),
    judge("B apply throughput >= A saturated write throughput", [g.bApplyPerSec, g.aSaturatedWritePerSec], () => g.bApplyPerSec! >= g.aSaturatedWritePerSec!,
      () => `${f(g.bApplyPerSec)} vs ${f(g.aSaturatedWritePerSec)} events/s`),
    judge("catch-up >= 5x steady rate", [g.catchUpPerSec, g.steadyPerSec], () => g.catchUpPerSec! >= 5 * g.steadyPerSec!,
      () => `${f(g.catchUpPerSec)} vs 5 x ${f(g.steadyPerSec)} events/s`),
    judge("graceful failover <= 1 s when caught up", [g.gracefulFailoverMs], () => g.gracefulFailoverMs! <= 1000, () => `${f(g.gracefulFailoverMs)} ms`),
    judge("acknowledged writes lost in graceful failover = 0", [g.lostAckedWrites], () => g.lostAckedWrites === 0, () => `${g.lostAckedWrites} lost`),
  ];
}
