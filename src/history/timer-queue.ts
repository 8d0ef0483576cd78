import { and, asc, eq, gt, isNull, lte, or, type SQL } from "drizzle-orm";
import { connectionLost, databaseBusy, loggableError, TernError } from "../errors";
import type { NamespaceRecord, NamespaceRegistry } from "../namespace/registry";
import { createFailureLog } from "../observability/failure-log";
import type { Logger } from "../observability/log";
import type { Metrics } from "../observability/metrics";
import { namespaces as namespaceRows, timerTasks } from "../persistence/schema";
import type { Db } from "../persistence/database";
import { chunksOf } from "../persistence/raw-statements";
import { runKeyText } from "./branch-store";
import { lockRun } from "./execution-store";
import { NamespaceChanged } from "./namespace-guard";
import type { EventNotifier } from "./notifier";
import { fireTimerBatch, timedOutEvent, type TimerTask } from "./timer-batch";
import type { Writer } from "./writer";
import type { TurnTaking } from "../turn-taking";

export interface TimerQueueDeps {
  db: Db;
  writer: Writer;
  namespaces: NamespaceRegistry;
  notifier: EventNotifier;
  metrics: Metrics;
  log: Logger;
  currentCluster: string;
  now: () => Date;
  /** Upper bound between scans, so timers written by other processes fire too. */
  pollMs?: number;
  /** Clients' calls in flight: each batch waits for those (at most as long as the batch before took). */
  turns?: TurnTaking;
}

/** The durable timer queue: fires due execution timeouts, surviving restarts. */
export interface TimerQueue {
  start(): void;
  /** A timer was written for fireAt: wake in time for it. */
  scheduled(fireAt: Date): void;
  /** Scans now, e.g. after a namespace became active here (failover): its due timers fire promptly. */
  rescan(): Promise<void>;
  stop(): Promise<void>;
}

const PAGE = 500;
/**
 * Timers fired in one transaction at most: a batch holds its runs' rows, and its shards' rows
 * from its replication tasks on, until it commits (PGlite: every other transaction, and the
 * event loop). Between batches the clients' calls in flight go first (deps.turns), so a
 * client's write waits for one batch at most. README says it.
 */
export const TIMER_BATCH = 50;

/** Creates the timer queue over the timer_tasks table. */
export function createTimerQueue(deps: TimerQueueDeps): TimerQueue {
  const { db, writer, log } = deps;
  const pollMs = deps.pollMs ?? 5000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let wakeAt = Infinity;
  let running: Promise<void> | undefined;
  let stopped = true;
  // Aborted at stop: a fire waiting for a lock is rolled back (its statement cancelled on PostgreSQL), its timer left due.
  let stopping = new AbortController();
  // A rescan asked for while a scan runs: run once more after it.
  let again = false;
  const failures = createFailureLog();
  // Timers whose own fire failed, by id: each logged once per distinct error until it fires.
  let failing = new Map<string, string>();
  // How long the last batch took: how long the next waits for clients' calls at most.
  let lastBatchMs = 0;

  const arm = (at: number) => {
    if (stopped || at >= wakeAt) return;
    if (timer) clearTimeout(timer);
    wakeAt = at;
    timer = setTimeout(() => {
      wakeAt = Infinity;
      void scan();
    }, Math.max(0, at - Date.now()));
  };

  // Only timers of namespaces active here (or local, or gone: fire() drops those) are due here.
  const firesHere = or(isNull(namespaceRows.id), eq(namespaceRows.isGlobal, false), eq(namespaceRows.activeClusterName, deps.currentCluster));

  /** Fires every due timer once, paging by (fire_at, id) so skipped ones are never re-read. */
  async function fireDue(): Promise<void> {
    const now = deps.now();
    const stillFailing = new Map<string, string>();
    let after: { fireAt: Date; id: string } | undefined;
    let next: TimerTask | undefined;
    for (;;) {
      const page = await duePage(now, after);
      const due = page.filter((t) => t.fireAt <= now);
      // Read with the page: a scan that finds nothing due (every pollMs when idle) is one statement.
      next = page.find((t) => t.fireAt > now);
      await firePage(due, stillFailing);
      // A stopping server leaves the rest due, for its next start or another server on the database.
      if (stopped) return;
      if (due.length < PAGE) break;
      after = due.at(-1)!;
    }
    failing = stillFailing;
    // Due timers fire() skipped wait for the next poll or rescan(), not a hot loop.
    arm(Math.min(Date.now() + pollMs, next ? next.fireAt.getTime() : Infinity));
  }

  /** Up to PAGE timers due at now past after, and the first one not yet due, in one statement. */
  async function duePage(now: Date, after: { fireAt: Date; id: string } | undefined): Promise<TimerTask[]> {
    const past = after ? or(gt(timerTasks.fireAt, after.fireAt), and(eq(timerTasks.fireAt, after.fireAt), gt(timerTasks.id, after.id))) : undefined;
    const rows = (where: SQL | undefined) => db.select({ task: timerTasks }).from(timerTasks).leftJoin(namespaceRows, eq(namespaceRows.id, timerTasks.namespaceId)).where(where);
    const due = rows(and(lte(timerTasks.fireAt, now), firesHere, past)).orderBy(asc(timerTasks.fireAt), asc(timerTasks.id)).limit(PAGE);
    const next = rows(and(gt(timerTasks.fireAt, now), firesHere)).orderBy(asc(timerTasks.fireAt)).limit(1);
    // union all keeps no order: due ones are told apart by their fire_at, and sorted again.
    const page = (await due.unionAll(next)).map((r) => r.task);
    return page.sort((a, b) => a.fireAt.getTime() - b.fireAt.getTime() || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  async function scan(): Promise<void> {
    if (stopped) return;
    if (running) {
      again = true;
      return void (await running);
    }
    running = (async () => {
      do {
        again = false;
        try {
          await fireDue();
          if (failures.succeeded() !== undefined) log.info("timer queue scan recovered");
        } catch (e) {
          // Retried a second later; each failure is said once, without the statement's parameters.
          const error = loggableError(e);
          if (failures.isNew(error)) {
            if (connectionLost(e) || databaseBusy(e)) log.warn("timer queue scan failed", { error });
            else log.error("timer queue scan failed", { error });
          }
          arm(Date.now() + 1000);
        }
      } while (again && !stopped);
    })();
    try {
      await running;
    } finally {
      running = undefined;
    }
  }

  /**
   * Fires a page of due timers in batches (fireTimerBatch), each of one namespace's. A run's
   * timers fire in due order, one batch after another: the k-th round holds each run's k-th
   * timer of the page. Those of a run a fire closed went with its close.
   */
  async function firePage(due: TimerTask[], stillFailing: Map<string, string>): Promise<void> {
    const rounds: TimerTask[][] = [];
    const seen = new Map<string, number>();
    for (const task of due) {
      const k = seen.get(runKeyText(task)) ?? 0;
      seen.set(runKeyText(task), k + 1);
      (rounds[k] ??= []).push(task);
    }
    const closed = new Set<string>();
    for (const round of rounds) {
      const byNamespace = new Map<string, TimerTask[]>();
      for (const t of round) {
        if (closed.has(runKeyText(t))) continue;
        if (!byNamespace.has(t.namespaceId)) byNamespace.set(t.namespaceId, []);
        byNamespace.get(t.namespaceId)!.push(t);
      }
      const batches = [...byNamespace.values()].flatMap((tasks) => chunksOf(tasks, TIMER_BATCH));
      // One batch at a time: two at once on PostgreSQL fired a backlog 1.4x as fast, but the
      // clients' writes beside it took 3x as long (they wait for the batches' shard rows).
      for (const batch of batches) {
        // Clients' calls first, for as long as the last batch took at most: under steady calls the drain keeps half the time.
        await deps.turns?.backgroundTurn(lastBatchMs);
        if (stopped) return;
        const started = performance.now();
        for (const task of await fireBatch(batch, stillFailing)) closed.add(runKeyText(task));
        lastBatchMs = performance.now() - started;
      }
    }
  }

  /**
   * Fires a batch of timers of one namespace (fireTimerBatch); resolves to those that closed
   * their run. A failure of a timer's own fails its batch: each fires alone then (fireOrSkip),
   * so that the others fire and the one is logged. A namespace found gone: each alone too.
   */
  async function fireBatch(tasks: TimerTask[], stillFailing: Map<string, string>): Promise<TimerTask[]> {
    const ns = tasks.length > 1 ? await namespaceOf(tasks[0]!.namespaceId) : undefined;
    if (ns?.isGlobal && ns.activeClusterName !== deps.currentCluster) return [];
    if (ns) {
      try {
        const closed = await fireTimerBatch(writer, ns, tasks, stopping.signal);
        for (const task of closed) fired(ns, task);
        for (const task of tasks) if (failing.has(task.id)) log.info("timer fired after failing", { timerId: task.id, workflowId: task.workflowId, runId: task.runId });
        return closed;
      } catch (e) {
        if (stopping.signal.aborted || e instanceof NamespaceChanged) return [];
        if (connectionLost(e) || databaseBusy(e)) throw e;
      }
    }
    const closed: TimerTask[] = [];
    for (const task of tasks) {
      if (stopped) break;
      if (await fireOrSkip(task, stillFailing)) closed.push(task);
    }
    return closed;
  }

  /** The namespace of id, undefined if it is gone; a failed read fails (a connection lost is not a namespace gone). */
  function namespaceOf(id: string): Promise<NamespaceRecord | undefined> {
    return deps.namespaces.getById(id).catch((e) => {
      if (e instanceof TernError && e.kind === "not_found") return undefined;
      throw e;
    });
  }

  /** Tells of a timer's fire that closed its run. */
  function fired(ns: NamespaceRecord, task: TimerTask): void {
    deps.notifier.notify(task.runId);
    deps.metrics.inc("workflow_timeout", { namespace: ns.name });
  }

  /**
   * Fires one timer. A failure of the database fails the scan (retried whole); a failure of this
   * timer's own leaves it due for the next scan and lets the timers after it fire.
   */
  async function fireOrSkip(task: TimerTask, stillFailing: Map<string, string>): Promise<boolean> {
    let closed: boolean;
    try {
      closed = await fire(task);
    } catch (e) {
      if (stopping.signal.aborted) return false;
      if (connectionLost(e) || databaseBusy(e)) throw e;
      // The namespace moved on under the fire (a graceful failover's HANDOVER, a failover, a
      // delete): no fault of the timer's. It stays due, for the cluster active once that settles.
      if (e instanceof NamespaceChanged) return false;
      const error = loggableError(e);
      stillFailing.set(task.id, error);
      deps.metrics.inc("timer_fire_failed", {});
      if (failing.get(task.id) !== error) {
        log.error("timer failed to fire; retried at the next scan", { timerId: task.id, namespaceId: task.namespaceId, workflowId: task.workflowId, runId: task.runId, error });
      }
      return false;
    }
    if (failing.has(task.id)) log.info("timer fired after failing", { timerId: task.id, workflowId: task.workflowId, runId: task.runId });
    return closed;
  }

  /** Fires one timer in a transaction of its own; resolves to whether it closed its run. */
  async function fire(task: TimerTask): Promise<boolean> {
    // Only a namespace found gone drops its timers; a failed read fails the fire (else a
    // connection lost at this read deleted the timer below, and the run never timed out).
    const ns = await namespaceOf(task.namespaceId);
    // Timers fire only where the namespace is active; the new active fires them after a failover.
    if (ns && ns.isGlobal && ns.activeClusterName !== deps.currentCluster) return false;
    const closed = await writer.transact("FireTimer", async (tx) => {
      // The namespace's barrier before any row lock, as a delete of the namespace takes them;
      // then the run's row before its timer's, as a write that closes the run takes them (it
      // deletes the run's timers): the timer's first, a fire and a close of one run each held
      // the lock the other waited for, until PostgreSQL ended one of them a second later.
      if (ns) await writer.guard(tx, ns);
      const run = ns ? await lockRun(tx, task.namespaceId, task.workflowId, task.runId) : undefined;
      const gone = await tx.delete(timerTasks).where(eq(timerTasks.id, task.id)).returning({ id: timerTasks.id });
      if (gone.length === 0 || !ns) return false; // another process fired it, or the namespace is gone
      if (!run || run.status !== "RUNNING") return false;
      await writer.append(tx, ns, run, { status: "TIMED_OUT", events: [timedOutEvent(run)] }, { guarded: true });
      return true;
    }, stopping.signal);
    if (closed) fired(ns!, task);
    return closed;
  }

  return {
    start() {
      stopped = false;
      stopping = new AbortController();
      void scan();
    },
    scheduled(fireAt) {
      arm(fireAt.getTime());
    },
    rescan: () => scan(),
    async stop() {
      stopped = true;
      stopping.abort();
      if (timer) clearTimeout(timer);
      await running;
    },
  };
}

