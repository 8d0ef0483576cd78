import { availableParallelism } from "node:os";
import type { CpuUsed } from "./cpu-usage";
import type { LogicalResult } from "./logical-baseline";
import type { LoadResult } from "./load";
import type { RelayResult } from "./relay-baseline";
import type { ReplicationArgs } from "./replication-args";
import type { CatchUpResult, FlowResult } from "./replication-phases";
import { evaluateGoals, formatFigures, formatGoals, ratioOf, type FigureRow, type LagSummary } from "./replication-report";

type Failover = { behindAtIssue: number; callMs: number; acceptedMs: number; ackedWrites: number; lostAckedWrites: number; loadErrors: number; firstError?: string };

/** Everything one run measured. */
export interface RunResults {
  args: ReplicationArgs;
  startedAt: Date;
  loadAverage: number[];
  steady: { flow: FlowResult; probe: { ackToVisibleMs: LagSummary; writeMs: LagSummary; errors: number; firstError?: string } };
  saturated: FlowResult;
  catchUp: CatchUpResult;
  graceful: Failover;
  gracefulBack: Failover;
  forced: Failover;
  memory: Record<string, { peakMb: number; rssMb: number } | undefined>;
  insert: LoadResult;
  relay?: RelayResult;
  logical?: LogicalResult;
}

/** A baseline named name, or none without a value. */
const base = (name: string, value: number | undefined) => (value === undefined ? undefined : { name, value });

/** A lag's p50, p95, p99 and max rows, each beside the same figure of `against` (called name) where there is one. */
const lagRows = (label: string, l: { p50: number; p95: number; p99: number }, max: number, against: LagSummary | undefined, name: string, maxLabel = "max"): FigureRow[] => [
  { figure: `${label} p50`, value: l.p50, unit: "ms", baseline: base(name, against?.p50) },
  { figure: `${label} p95`, value: l.p95, unit: "ms", baseline: base(name, against?.p95) },
  { figure: `${label} p99`, value: l.p99, unit: "ms", baseline: base(name, against?.p99) },
  { figure: `${label} ${maxLabel}`, value: max, unit: "ms", baseline: base(name, against?.max) },
];

/**
 * The relay floor beside logical replication, and tern's lag beside the floor: from the
 * commit where both sources keep commit timestamps, else from the event time.
 */
function relayRows(r: RunResults): FigureRow[] {
  const relay = r.relay;
  if (!relay) return [];
  const tern = r.steady.flow;
  const fromCommit = relay.commitLagMs && tern.commitLagMs;
  const [floor, ours, logical] = fromCommit ? [relay.commitLagMs!, tern.commitLagMs!, r.logical?.commitLagMs] : [relay.lagMs, tern.stampLagMs, r.logical?.lagMs];
  const from = fromCommit ? "from the source's commit" : "from the event time";
  return [
    ...lagRows(`relay floor lag ${from}`, floor, floor.max, logical, "logical"),
    { figure: `tern lag ${from} p50, against the relay floor`, value: ours.p50, unit: "ms", baseline: { name: "relay", value: floor.p50 } },
    { figure: `tern lag ${from} p99, against the relay floor`, value: ours.p99, unit: "ms", baseline: { name: "relay", value: floor.p99 } },
    ...cpuRows("relay floor", { "relay source": relay.cpuMsPerEvent.source, "relay sink": relay.cpuMsPerEvent.sink }, true),
    { figure: "CPU per event, both tern servers and their PostgreSQL (steady), against the relay floor's", value: totalCpu(tern.cpuMsPerEvent), unit: "ms", baseline: { name: "relay", value: totalCpu(relay.cpuMsPerEvent) } },
  ];
}

/** CPU ms per event of every process and PostgreSQL backend in cpu. */
const totalCpu = (cpu: Record<string, CpuUsed>): number => Object.values(cpu).reduce((sum, c) => sum + c.tern + c.pg, 0);

/** CPU ms per event of each cluster's server and PostgreSQL in a phase; with `threads`, the server's by thread kind too. */
const cpuRows = (phase: string, cpu: FlowResult["cpuMsPerEvent"], threads = false): FigureRow[] =>
  Object.entries(cpu).flatMap(([name, c]) => [
    { figure: `CPU per event, ${name} server (${phase})`, value: c.tern, unit: "ms" },
    ...(threads ? [threadRow(`${name} server (${phase})`, c)] : []),
    { figure: `CPU per event, ${name} PostgreSQL (${phase})`, value: c.pg, unit: "ms" },
  ]);

/** A server's CPU per event on its main thread, and beside it on the others (JIT compilers, collector helpers, fetch's HTTP client). */
function threadRow(of: string, c: CpuUsed): FigureRow {
  const others = (["jit", "gc", "http client", "other"] as const).filter((k) => c.threads[k] !== undefined).map((k) => [k, c.threads[k]] as const);
  return {
    figure: `  of which main thread, ${of}`,
    value: c.threads.main ?? Number.NaN,
    unit: `ms; ${others.map(([kind, ms]) => `${kind} ${ms!.toFixed(3)}`).join(", ") || "no other threads"}`,
  };
}

/** The figures table, the goals and the JSON written to bench/results. */
export function buildReport(r: RunResults): { text: string; json: unknown } {
  const lg = r.logical?.lagMs;
  const s = r.steady.flow;
  const h = s.histogramLagMs;
  const steadyWrite = s.aWriteEventsPerSec;
  const rows: FigureRow[] = [
    ...lagRows("lag, per-event stamps", s.stampLagMs, s.stampLagMs.max, lg, "logical"),
    // Where A's PostgreSQL keeps commit timestamps (--own-postgres): from the commit, as logical replication's from its publisher's.
    ...(s.commitLagMs ? lagRows("lag from A's commit (commit timestamps)", s.commitLagMs, s.commitLagMs.max, r.logical?.commitLagMs, "logical from commit") : []),
    ...relayRows(r),
    ...lagRows("lag, replication_latency histogram", h, h.maxBound, lg, "logical", "max (bucket bound)"),
    { figure: "lag part, write on A -> page arrived on B (fetch histogram) p50", value: s.lagSplitMs.fetch.p50, unit: "ms" },
    { figure: "lag part, write on A -> page arrived on B (fetch histogram) p99", value: s.lagSplitMs.fetch.p99, unit: "ms" },
    { figure: "lag part, page arrived on B -> applied (apply histogram) p50", value: s.lagSplitMs.apply.p50, unit: "ms" },
    { figure: "lag part, page arrived on B -> applied (apply histogram) p99", value: s.lagSplitMs.apply.p99, unit: "ms" },
    ...lagRows("lag, probe ack on A -> visible on B", r.steady.probe.ackToVisibleMs, r.steady.probe.ackToVisibleMs.max, lg, "logical"),
    { figure: `A acked ops/s, paced at ${r.args.rate}/s`, value: s.opsPerSec, unit: "ops/s", baseline: { name: "target", value: r.args.rate } },
    { figure: `A write @${r.args.rate} ops/s`, value: steadyWrite, unit: "events/s" },
    { figure: `B apply @${r.args.rate} ops/s`, value: s.bApplyEventsPerSec, unit: "events/s", baseline: { name: "A write", value: steadyWrite } },
    { figure: `A write saturated (${r.args.clients} clients)`, value: r.saturated.aWriteEventsPerSec, unit: "events/s", baseline: { name: "raw INSERT", value: r.insert.opsPerSec } },
    { figure: "B apply saturated", value: r.saturated.bApplyEventsPerSec, unit: "events/s", baseline: { name: "A saturated", value: r.saturated.aWriteEventsPerSec } },
    { figure: "lag p99 saturated (stamps)", value: r.saturated.stampLagMs.p99, unit: "ms", baseline: base("logical @rate", lg?.p99) },
    { figure: `catch-up after ${r.args.catchupS}s pause: backlog (${r.catchUp.backlogEvents} events) applied`, value: r.catchUp.drain?.seconds ?? Number.NaN, unit: "s" },
    { figure: "catch-up: time to lag < 1 s", value: r.catchUp.lagBelow1s.seconds ?? Number.NaN, unit: "s" },
    { figure: "catch-up apply rate", value: r.catchUp.drain?.eventsPerSec ?? Number.NaN, unit: "events/s", baseline: { name: "steady A write", value: steadyWrite } },
    { figure: `graceful failover A->B: call -> B accepts (B ${r.graceful.behindAtIssue} events behind)`, value: r.graceful.acceptedMs, unit: "ms", baseline: { name: "1 s goal", value: 1000 } },
    { figure: "graceful failover B->A: call -> A accepts", value: r.gracefulBack.acceptedMs, unit: "ms", baseline: { name: "1 s goal", value: 1000 } },
    { figure: "forced failover: UpdateNamespace -> B accepts", value: r.forced.acceptedMs, unit: "ms" },
    { figure: "acked writes lost, graceful A->B", value: r.graceful.lostAckedWrites, unit: `of ${r.graceful.ackedWrites}` },
    { figure: "acked writes lost, graceful B->A", value: r.gracefulBack.lostAckedWrites, unit: `of ${r.gracefulBack.ackedWrites}` },
    { figure: "acked writes missing on B after forced", value: r.forced.lostAckedWrites, unit: `of ${r.forced.ackedWrites}` },
    { figure: `B tasks per applied page @${r.args.rate} ops/s`, value: s.bPages.tasksPerPage, unit: `tasks (of ${s.bPages.pages} pages: ${s.bPages.oneTrip} in one trip, ${s.bPages.full} in full)` },
    { figure: `B apply transaction p50 / p99 @${r.args.rate} ops/s`, value: s.bApplyTx.p50, unit: `ms / ${s.bApplyTx.p99.toFixed(2)} ms` },
    { figure: `B apply stream busy in transactions @${r.args.rate} ops/s`, value: s.bApplyTx.busy * 100, unit: "% of the phase" },
    ...Object.entries(s.loopDelayMs).map(([name, d]) => ({
      figure: `event-loop delay ${name} p50 / p99 @${r.args.rate} ops/s`, value: d.p50,
      unit: `ms / ${d.p99.toFixed(1)} ms (${d.samples} samples, ${(d.over10ms * 100).toFixed(0)}% over 10 ms)`,
    })),
    { figure: `A pages sent from memory @${r.args.rate} ops/s`, value: s.aPagesSent.memory, unit: `pages (${s.aPagesSent.database} read from the database)` },
    { figure: "B tasks per applied page saturated", value: r.saturated.bPages.tasksPerPage, unit: `tasks (of ${r.saturated.bPages.pages} pages: ${r.saturated.bPages.oneTrip} in one trip, ${r.saturated.bPages.full} in full)` },
    ...cpuRows("steady", s.cpuMsPerEvent, true),
    { figure: "CPU per event, bench process: load clients, probe (steady)", value: s.benchCpuMsPerEvent, unit: "ms" },
    { figure: "cores busy @steady rate (servers, PostgreSQL, bench)", value: s.coresBusy, unit: `of ${availableParallelism()}` },
    ...cpuRows("saturated", r.saturated.cpuMsPerEvent),
    { figure: "CPU per event, B server (catch-up apply)", value: r.catchUp.bCpuMsPerEvent.tern, unit: "ms" },
    { figure: "CPU per event, B PostgreSQL (catch-up apply)", value: r.catchUp.bCpuMsPerEvent.pg, unit: "ms" },
    ...Object.entries(r.memory).map(([name, m]) => ({ figure: `peak RSS ${name} (VmHWM)`, value: m?.peakMb ?? Number.NaN, unit: "MB" })),
  ];
  const goals = evaluateGoals({
    ...(s.commitLagMs
      ? { lagP99Ms: s.commitLagMs.p99, logicalLagP99Ms: r.logical?.commitLagMs?.p99, lagFrom: "both from the commit" }
      : { lagP99Ms: Number.isFinite(s.stampLagMs.p99) ? s.stampLagMs.p99 : h.p99, logicalLagP99Ms: lg?.p99, lagFrom: "from the event time, before A's commit" }),
    bApplyPerSec: Math.max(r.saturated.bApplyEventsPerSec, r.catchUp.drain?.eventsPerSec || 0),
    aSaturatedWritePerSec: r.saturated.aWriteEventsPerSec,
    catchUpPerSec: r.catchUp.drain?.eventsPerSec,
    steadyPerSec: steadyWrite,
    gracefulFailoverMs: r.graceful.acceptedMs,
    lostAckedWrites: r.graceful.lostAckedWrites + r.gracefulBack.lostAckedWrites,
  });
  const la = r.loadAverage.map((l) => l.toFixed(2)).join(" ");
  const text = [
    formatFigures(rows),
    "",
    "goals:",
    formatGoals(goals),
    "",
    `load average at end: ${la}`,
  ].join("\n");
  const json = {
    startedAt: r.startedAt.toISOString(), args: r.args, loadAverageAtEnd: r.loadAverage,
    figures: rows.map((row) => ({ ...row, ratio: ratioOf(row) })), goals,
    raw: { steady: r.steady, saturated: r.saturated, catchUp: r.catchUp, graceful: r.graceful, gracefulBack: r.gracefulBack, forced: r.forced, memory: r.memory, insert: r.insert, relay: r.relay, logical: r.logical },
  };
  return { text, json };
}
