import { and, asc, eq, gt, isNull, lte, or } from "drizzle-orm";
import { connectionLost, databaseBusy, loggableError, TernError } from "../errors";
import type { NamespaceRegistry } from "../namespace/registry";
import { createFailureLog } from "../observability/failure-log";
import type { Logger } from "../observability/log";
import type { Metrics } from "../observability/metrics";
import { namespaces as namespaceRows, timerTasks } from "../persistence/schema";
import type { Db } from "../persistence/database";
import { lockRun } from "./execution-store";
import { NamespaceChanged } from "./namespace-guard";
import type { EventNotifier } from "./notifier";
import type { Writer } from "./writer";

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

const PAGE = 100;

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
    for (;;) {
      const past = after ? or(gt(timerTasks.fireAt, after.fireAt), and(eq(timerTasks.fireAt, after.fireAt), gt(timerTasks.id, after.id))) : undefined;
      const due = (
        await db
          .select({ task: timerTasks })
          .from(timerTasks)
          .leftJoin(namespaceRows, eq(namespaceRows.id, timerTasks.namespaceId))
          .where(and(lte(timerTasks.fireAt, now), firesHere, past))
          .orderBy(asc(timerTasks.fireAt), asc(timerTasks.id))
          .limit(PAGE)
      ).map((r) => r.task);
      for (const task of due) {
        // A stopping server leaves the rest due, for its next start or another server on the database.
        if (stopped) return;
        await fireOrSkip(task, stillFailing);
      }
      if (due.length < PAGE) break;
      after = due.at(-1)!;
    }
    failing = stillFailing;
    // Due timers fire() skipped wait for the next poll or rescan(), not a hot loop.
    const [next] = await db
      .select({ fireAt: timerTasks.fireAt })
      .from(timerTasks)
      .leftJoin(namespaceRows, eq(namespaceRows.id, timerTasks.namespaceId))
      .where(and(gt(timerTasks.fireAt, now), firesHere))
      .orderBy(asc(timerTasks.fireAt))
      .limit(1);
    arm(Math.min(Date.now() + pollMs, next ? next.fireAt.getTime() : Infinity));
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
   * Fires one timer. A failure of the database fails the scan (retried whole); a failure of this
   * timer's own leaves it due for the next scan and lets the timers after it fire.
   */
  async function fireOrSkip(task: typeof timerTasks.$inferSelect, stillFailing: Map<string, string>): Promise<void> {
    try {
      await fire(task);
    } catch (e) {
      if (stopping.signal.aborted) return;
      if (connectionLost(e) || databaseBusy(e)) throw e;
      // The namespace moved on under the fire (a graceful failover's HANDOVER, a failover, a
      // delete): no fault of the timer's. It stays due, for the cluster active once that settles.
      if (e instanceof NamespaceChanged) return;
      const error = loggableError(e);
      stillFailing.set(task.id, error);
      deps.metrics.inc("timer_fire_failed", {});
      if (failing.get(task.id) !== error) {
        log.error("timer failed to fire; retried at the next scan", { timerId: task.id, namespaceId: task.namespaceId, workflowId: task.workflowId, runId: task.runId, error });
      }
      return;
    }
    if (failing.has(task.id)) log.info("timer fired after failing", { timerId: task.id, workflowId: task.workflowId, runId: task.runId });
  }

  async function fire(task: typeof timerTasks.$inferSelect): Promise<void> {
    // Only a namespace found gone drops its timers; a failed read fails the fire (else a
    // connection lost at this read deleted the timer below, and the run never timed out).
    const ns = await deps.namespaces.getById(task.namespaceId).catch((e) => {
      if (e instanceof TernError && e.kind === "not_found") return undefined;
      throw e;
    });
    // Timers fire only where the namespace is active; the new active fires them after a failover.
    if (ns && ns.isGlobal && ns.activeClusterName !== deps.currentCluster) return;
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
      await writer.append(tx, ns, run, {
        status: "TIMED_OUT",
        events: [{ attributes: { case: "workflowExecutionTimedOutEventAttributes", value: { executionTimeoutMs: BigInt(run.executionTimeoutMs) } as never } }],
      }, { guarded: true });
      return true;
    }, stopping.signal);
    if (closed) {
      deps.notifier.notify(task.runId);
      deps.metrics.inc("workflow_timeout", { namespace: ns!.name });
    }
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

