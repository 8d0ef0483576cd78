import { FORWARDED_HEADER } from "../../src/frontend/forwarding";
import { cpuOf, cpuPerEvent, type CpuSample, type CpuUsed } from "./cpu-usage";
import { backlogDrain, catchUpFrom, commitLagsOfWrittenIn, lagsOfWrittenIn, readApplyStamps, type BacklogDrain, type CatchUp } from "./apply-stamps";
import { runLagProbe } from "./lag-probe";
import { runLoad } from "./load";
import { runPaced } from "./paced-load";
import { diffHistogram, histogramAbove, histogramMaxBound, histogramQuantile, parseCounter, parseHistogram, type Histogram } from "./prom-histogram";
import { eventCount, scrape, until, type BenchCluster } from "./replication-clusters";
import { lagSummary, type LagSummary } from "./replication-report";
import { writeOp, type AckedSignal } from "./replication-workload";

/** What every phase needs. */
export interface PhaseContext {
  a: BenchCluster;
  b: BenchCluster;
  namespace: string;
  log: (line: string) => void;
}

/** A load phase on A and how B followed it. */
export interface FlowResult {
  ops: number;
  errors: number;
  firstError?: string;
  /** Acknowledged writes per second on A (a paced phase falls short of its rate when A cannot keep up). */
  opsPerSec: number;
  aWriteEventsPerSec: number;
  /** Events written in the phase / (last apply on B − phase start). */
  bApplyEventsPerSec: number;
  /** Per event, event_time on A (set before its transaction) → trigger stamp on B. */
  stampLagMs: LagSummary;
  /** Per event, its commit on A (commit timestamp) → trigger stamp on B; only where A's PostgreSQL keeps commit timestamps. */
  commitLagMs?: LagSummary;
  /** replication_latency observations of the phase (bucket resolution, interpolated). */
  histogramLagMs: { count: number; p50: number; p95: number; p99: number; maxBound: number };
  /** The same lag in two parts (histograms, interpolated): until a task's page arrived on B, and from then until applied. */
  lagSplitMs: { fetch: { p50: number; p99: number }; apply: { p50: number; p99: number } };
  drainMs: number;
  /** CPU ms per event written in the phase, per cluster: server process and PostgreSQL backends (load to drain). */
  cpuMsPerEvent: Record<string, CpuUsed>;
  /** The same for this bench process: its load clients, probe and counting (they share the machine). */
  benchCpuMsPerEvent: number;
  /** Cores busy from load start to drain: both clusters' servers and PostgreSQL backends, and this process. */
  coresBusy: number;
  /** B's applied pages in the phase: tasks per page (fixed costs are per page), pages applied in one round trip, and pages that needed the full apply path. */
  bPages: { pages: number; tasks: number; tasksPerPage: number; oneTrip: number; full: number };
  /** A's pages sent to B in the phase, by source: its outbox tail (memory) or a database read. */
  aPagesSent: { memory: number; database: number };
  /**
   * B's apply transactions (persistence_latency of ReplicateHistory): p50 and p99 (ms), and
   * the share of the phase (load start to drain) spent in them; the stream applies one page
   * at a time, so a share near 1 means pages queue behind the apply.
   */
  bApplyTx: { p50: number; p99: number; busy: number };
  /**
   * Each server's event-loop delay samples of the phase (process_event_loop_delay_seconds,
   * one every 100 ms): how many, p50 and p99 in ms (interpolated), and the share above 10 ms.
   * No samples on revisions without the sampler.
   */
  loopDelayMs: Record<string, { samples: number; p50: number; p99: number; over10ms: number }>;
}

/** What B's counters say of its applies so far. */
const applyCounters = (metrics: string) => ({
  pages: parseCounter(metrics, "replication_pages_applied"),
  oneTrip: parseCounter(metrics, "replication_pages_applied", { path: "one-trip" }),
  full: parseCounter(metrics, "replication_pages_applied", { path: "full" }),
  tasks: parseCounter(metrics, "replication_tasks_applied"),
});

/** What A's counters say of the pages it sent so far. */
const sentCounters = (metrics: string) => ({
  memory: parseCounter(metrics, "replication_pages_sent", { source: "memory" }),
  database: parseCounter(metrics, "replication_pages_sent", { source: "database" }),
});

const cpuOfBoth = async (ctx: PhaseContext): Promise<Record<string, CpuSample>> => ({ [ctx.a.name]: await cpuOf(ctx.a), [ctx.b.name]: await cpuOf(ctx.b) });

const latency = (metrics: string): Histogram => parseHistogram(metrics, "replication_latency");

/** Waits until B holds as many history events as A (every write so far applied). */
export async function drain(ctx: PhaseContext, timeoutMs = 120_000): Promise<number> {
  return until("B applied every event of A", async () => (await eventCount(ctx.b)) >= (await eventCount(ctx.a)), { timeoutMs, intervalMs: 25 });
}

/** Runs `load` on A and measures B following it: throughput, per-event lag, the latency histogram. */
export async function measureFlow(ctx: PhaseContext, load: () => Promise<{ ops: number; errors: number; elapsedS: number; firstError?: string }>): Promise<FlowResult> {
  const [m0, a0, n0, cpu0] = [await scrape(ctx.b), await scrape(ctx.a), await eventCount(ctx.a), await cpuOfBoth(ctx)];
  const bench0 = process.cpuUsage();
  const t0 = Date.now();
  const r = await load();
  const t1 = Date.now();
  const n1 = await eventCount(ctx.a);
  const drainMs = await drain(ctx);
  const benchUsed = process.cpuUsage(bench0);
  const busyUntil = Date.now();
  const cpuMsPerEvent = cpuPerEvent(cpu0, await cpuOfBoth(ctx), n1 - n0);
  const benchCpuMsPerEvent = (benchUsed.user + benchUsed.system) / 1000 / Math.max(n1 - n0, 1);
  const perEvent = Object.values(cpuMsPerEvent).reduce((sum, c) => sum + c.tern + c.pg, benchCpuMsPerEvent);
  const coresBusy = (perEvent * (n1 - n0)) / (busyUntil - t0);
  const stamps = await readApplyStamps(ctx.b.sql, t0);
  const lags = lagsOfWrittenIn(stamps, t0, t1);
  const commitLags = await commitLagsOfWrittenIn(ctx.a.sql, ctx.b.sql, t0, t1);
  // A loop, not a spread: a long soak has millions of stamps, past what a spread takes.
  const lastApply = stamps.reduce((m, s) => (s.eventTimeMs < t1 && s.appliedAtMs > m ? s.appliedAtMs : m), Number.NEGATIVE_INFINITY);
  const [m1, a1] = [await scrape(ctx.b), await scrape(ctx.a)];
  const [s0, s1] = [sentCounters(a0), sentCounters(a1)];
  const h = diffHistogram(latency(m1), latency(m0));
  const [c0, c1] = [applyCounters(m0), applyCounters(m1)];
  const pages = c1.pages - c0.pages;
  const tasks = c1.tasks - c0.tasks;
  const ms = (q: number) => histogramQuantile(h, q) * 1000;
  // A histogram's observations of the phase, and their p50 and p99 in ms.
  const observed = (name: string, match: Record<string, string> = {}) => diffHistogram(parseHistogram(m1, name, match), parseHistogram(m0, name, match));
  const quantiles = (d: Histogram) => ({ p50: histogramQuantile(d, 0.5) * 1000, p99: histogramQuantile(d, 0.99) * 1000 });
  const applyTx = observed("persistence_latency", { operation: "ReplicateHistory" });
  const loopDelay = (after: string, before: string) => {
    const d = diffHistogram(parseHistogram(after, "process_event_loop_delay_seconds"), parseHistogram(before, "process_event_loop_delay_seconds"));
    return { samples: d.count, ...quantiles(d), over10ms: d.count ? histogramAbove(d, 0.01) / d.count : 0 };
  };
  return {
    ops: r.ops, errors: r.errors, firstError: r.firstError, opsPerSec: r.ops / r.elapsedS,
    aWriteEventsPerSec: (n1 - n0) / r.elapsedS,
    bApplyEventsPerSec: lags.length / ((lastApply - t0) / 1000),
    stampLagMs: lagSummary(lags),
    commitLagMs: commitLags && lagSummary(commitLags),
    histogramLagMs: { count: h.count, p50: ms(0.5), p95: ms(0.95), p99: ms(0.99), maxBound: histogramMaxBound(h) * 1000 },
    lagSplitMs: { fetch: quantiles(observed("replication_fetch_latency")), apply: quantiles(observed("replication_apply_latency")) },
    drainMs,
    bApplyTx: { ...quantiles(applyTx), busy: applyTx.sum / ((busyUntil - t0) / 1000) },
    cpuMsPerEvent,
    benchCpuMsPerEvent,
    coresBusy,
    bPages: { pages, tasks, tasksPerPage: tasks / pages, oneTrip: c1.oneTrip - c0.oneTrip, full: c1.full - c0.full },
    aPagesSent: { memory: s1.memory - s0.memory, database: s1.database - s0.database },
    loopDelayMs: { [ctx.a.name]: loopDelay(a1, a0), [ctx.b.name]: loopDelay(m1, m0) },
  };
}

/**
 * Steady paced load with the end-to-end probe running beside it, measured after `warmupMs`
 * of the same load (new connections, statements prepared per connection and JIT
 * compilation make the first second after start slower; that is start-up, not steady state).
 */
export async function steadyPhase(ctx: PhaseContext, o: { rate: number; clients: number; durationMs: number; warmupMs: number }) {
  await runPaced({ rate: o.rate, clients: o.clients, durationMs: o.warmupMs, op: writeOp(ctx.a.clients, ctx.namespace, "warmup") });
  await drain(ctx);
  const stop = new AbortController();
  const probe = runLagProbe({ a: ctx.a.clients, b: ctx.b.clients, namespace: ctx.namespace, workflowId: "probe-steady", intervalMs: 100, signal: stop.signal });
  await Bun.sleep(300);
  const flow = await measureFlow(ctx, () => runPaced({ rate: o.rate, clients: o.clients, durationMs: o.durationMs, op: writeOp(ctx.a.clients, ctx.namespace, "steady") }));
  stop.abort();
  const p = await probe;
  return {
    flow,
    probe: { ackToVisibleMs: lagSummary(p.samples.map((s) => s.ackToVisibleMs)), writeMs: lagSummary(p.samples.map((s) => s.writeMs)), errors: p.errors, firstError: p.firstError },
  };
}

/** Closed loop: `clients` back-to-back writers, A as fast as it goes. */
export function saturatedPhase(ctx: PhaseContext, o: { clients: number; durationMs: number }): Promise<FlowResult> {
  return measureFlow(ctx, () => runLoad({ clients: o.clients, warmupMs: 0, durationMs: o.durationMs, op: writeOp(ctx.a.clients, ctx.namespace, "sat") }));
}

const setConnection = (ctx: PhaseContext, enable: boolean) =>
  ctx.b.clients.operator.addOrUpdateRemoteCluster({ frontendAddress: ctx.a.proc.address, enableRemoteClusterConnection: enable });

/** What the catch-up phase measured. */
export interface CatchUpResult {
  pausedS: number;
  backlogEvents: number;
  /** Resume → every event written before the resume applied on B. */
  drain: BacklogDrain | null;
  /** Resume → lag stays below 1 s (null if not within 30 s of the drain: steady lag itself is higher). */
  lagBelow1s: CatchUp;
  /** B's CPU ms per event applied from the resume until the backlog was applied. */
  bCpuMsPerEvent: CpuUsed;
}

/** B's connection to A disabled for `pauseMs` under paced load, then re-enabled; load runs on through the catch-up. */
export async function catchUpPhase(ctx: PhaseContext, o: { rate: number; clients: number; pauseMs: number }): Promise<CatchUpResult> {
  const stop = new AbortController();
  const load = runPaced({ ...o, durationMs: o.pauseMs + 300_000, signal: stop.signal, op: writeOp(ctx.a.clients, ctx.namespace, "catchup") });
  try {
    await setConnection(ctx, false);
    const t0 = Date.now();
    const b0 = await eventCount(ctx.b);
    await Bun.sleep(o.pauseMs);
    const backlogEvents = (await eventCount(ctx.a)) - b0;
    const [cpu0, applied0] = [await cpuOf(ctx.b), await eventCount(ctx.b)];
    await setConnection(ctx, true);
    const resumedAt = Date.now();
    const pausedS = (resumedAt - t0) / 1000;
    ctx.log(`  paused ${pausedS.toFixed(1)} s, backlog ~${backlogEvents} events; re-enabled`);
    const target = await eventCount(ctx.a);
    await until("B applied the backlog", async () => (await eventCount(ctx.b)) >= target, { timeoutMs: 180_000, intervalMs: 100 });
    const bCpuMsPerEvent = cpuPerEvent({ b: cpu0 }, { b: await cpuOf(ctx.b) }, (await eventCount(ctx.b)) - applied0).b!;
    const drain = backlogDrain(await readApplyStamps(ctx.b.sql, resumedAt), resumedAt);
    let lagBelow1s: CatchUp = { seconds: null, eventsPerSec: Number.NaN, events: 0 };
    await until("lag < 1 s for 1 s", async () => {
      lagBelow1s = catchUpFrom(await readApplyStamps(ctx.b.sql, resumedAt), resumedAt);
      return lagBelow1s.seconds !== null && Date.now() - resumedAt > (lagBelow1s.seconds + 1) * 1000;
    }, { timeoutMs: 30_000, intervalMs: 250 }).catch(() => {});
    return { pausedS, backlogEvents, drain, lagBelow1s, bCpuMsPerEvent };
  } finally {
    stop.abort();
    await load;
    await setConnection(ctx, true).catch(() => {});
  }
}

/** Resolves with the ms until `cluster` itself (no forwarding) accepts a signal to workflowId. */
async function firstLocalWrite(ctx: PhaseContext, cluster: BenchCluster, workflowId: string, since: number, timeoutMs = 60_000): Promise<number> {
  for (;;) {
    const ok = await cluster.clients.workflow.signalWorkflowExecution(
      { namespace: ctx.namespace, workflowExecution: { workflowId }, signalName: "failover-probe", requestId: crypto.randomUUID() },
      { headers: { [FORWARDED_HEADER]: "bench" }, timeoutMs: 5_000 },
    ).then(() => true, () => false);
    const now = performance.now();
    if (ok) return now - since;
    if (now - since > timeoutMs) throw new Error(`${cluster.name} accepted no write within ${timeoutMs / 1000}s`);
    await Bun.sleep(5);
  }
}

/** Acked signals not (yet) in cluster's database after waiting up to waitMs for them. */
async function missingOn(cluster: BenchCluster, prefix: string, acked: readonly AckedSignal[], waitMs: number): Promise<number> {
  let missing = acked.length;
  await until(`every acked signal is on ${cluster.name}`, async () => {
    const rows = await cluster.sql<{ k: string }[]>`select run_id || '/' || event_id as k from history_events where workflow_id like ${`${prefix}-%`}`;
    const have = new Set(rows.map((r) => r.k));
    missing = acked.filter((s) => !have.has(`${s.runId}/${s.eventId}`)).length;
    return missing === 0;
  }, { timeoutMs: waitMs, intervalMs: 250 }).catch(() => {});
  return missing;
}

/** A failover under paced load on A: ms from the call to the first write `to` accepts itself, and acked writes missing on `to`. */
export async function failoverPhase(ctx: PhaseContext, o: { rate: number; clients: number; kind: "graceful" | "forced"; from: BenchCluster; to: BenchCluster; prefix: string }) {
  const probeId = `${o.prefix}-probe`;
  await o.from.clients.workflow.startWorkflowExecution({ namespace: ctx.namespace, workflowId: probeId, workflowType: "Probe", taskQueue: "probe" });
  await drain(ctx).catch(() => {});
  const acked: AckedSignal[] = [];
  const stop = new AbortController();
  const load = runPaced({ ...o, durationMs: 60_000, signal: stop.signal, op: writeOp(ctx.a.clients, ctx.namespace, `failover-${o.prefix}`, acked) });
  await Bun.sleep(2_000);
  // How far the target was behind when the call went out ("when caught up" is the goal's premise).
  const behindAtIssue = Math.abs((await eventCount(ctx.a)) - (await eventCount(ctx.b)));
  const issued = performance.now();
  const accepted = firstLocalWrite(ctx, o.to, probeId, issued);
  const call = o.kind === "graceful"
    ? o.from.clients.operator.failoverNamespace({ namespace: ctx.namespace, targetCluster: o.to.name, timeout: { seconds: 30n } })
    : o.to.clients.workflow.updateNamespace({ namespace: ctx.namespace, activeClusterName: o.to.name });
  const callMs = await call.then(() => performance.now() - issued);
  const acceptedMs = await accepted;
  await Bun.sleep(2_000);
  stop.abort();
  const l = await load;
  const lost = await missingOn(o.to, `failover-${o.prefix}`, acked, 20_000);
  return { behindAtIssue, callMs, acceptedMs, ackedWrites: acked.length, lostAckedWrites: lost, loadErrors: l.errors, firstError: l.firstError };
}
