import { loggableError } from "./errors";
import { createFailureLog } from "./observability/failure-log";
import type { Logger } from "./observability/log";

/**
 * A background pass run every intervalMs, counted from the end of the previous one, from
 * start() until stop(): a failing pass is logged as "<name> failed" and the next still runs;
 * a failure repeated pass after pass (a database outage) is logged once, and the first pass
 * that works after it as "<name> recovered". stop() aborts the signal the pass was given and
 * waits for it to end.
 */
export function createPeriodic<T>(
  pass: (stopping: AbortSignal) => Promise<T>, o: { name: string; log: Logger; intervalMs: number | (() => number); onDone?: (result: T) => void },
) {
  const interval = () => (typeof o.intervalMs === "number" ? o.intervalMs : o.intervalMs());
  let timer: ReturnType<typeof setTimeout> | undefined;
  let dueAt = Infinity;
  let running: Promise<T> | undefined;
  let stopped = true;
  // Aborted at stop: a pass that heeds it ends rather than hold the stop (a statement waiting for a lock).
  let stopping = new AbortController();
  const failures = createFailureLog();

  async function tick(): Promise<void> {
    try {
      running = pass(stopping.signal);
      const result = await running;
      if (failures.succeeded() !== undefined) o.log.info(`${o.name} recovered`);
      o.onDone?.(result);
    } catch (e) {
      const error = loggableError(e);
      // A pass the stop ended did not fail.
      if (!stopping.signal.aborted && failures.isNew(error)) o.log.warn(`${o.name} failed`, { error });
    } finally {
      running = undefined;
      if (!stopped) schedule(interval());
    }
  }

  function schedule(ms: number): void {
    dueAt = Date.now() + ms;
    timer = setTimeout(tick, ms);
  }

  return {
    start(): void {
      stopped = false;
      stopping = new AbortController();
      schedule(interval());
    },
    /** Brings the next pass forward to within ms; a pass running now schedules the next by intervalMs when it ends. */
    soon(ms: number): void {
      if (stopped || running || dueAt - Date.now() <= ms) return;
      clearTimeout(timer);
      schedule(ms);
    },
    async stop(): Promise<void> {
      stopped = true;
      stopping.abort();
      if (timer) clearTimeout(timer);
      await running?.catch(() => {});
    },
  };
}
