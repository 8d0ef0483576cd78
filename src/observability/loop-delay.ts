import type { Metrics } from "./metrics";

/**
 * Samples how late this process's event loop runs a timer: one timer at a time, every
 * intervalMs, and how far past its due time it fired goes to
 * `process_event_loop_delay_seconds`. Every request, commit and replication page waits on
 * this loop, so the histogram shows when the process itself was held up (a long task, a
 * garbage collection, no CPU to run on) rather than its database or peer. A stall shorter
 * than the interval is caught when a timer falls due in it: the samples estimate what work
 * arriving at a random moment waits, not every stall.
 */
export function startLoopDelaySampler(metrics: Metrics, intervalMs = 100): { stop(): void } {
  let due = performance.now() + intervalMs;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const fire = () => {
    const now = performance.now();
    metrics.observe("process_event_loop_delay_seconds", {}, Math.max(0, now - due) / 1000);
    due = now + intervalMs;
    timer = arm();
  };
  // Unreferenced where the runtime allows it (Bun, Node): the sampler alone keeps no process alive.
  const arm = () => {
    const t = setTimeout(fire, intervalMs);
    (t as { unref?: () => void }).unref?.();
    return t;
  };
  timer = arm();
  return {
    stop() {
      clearTimeout(timer);
      timer = undefined;
    },
  };
}
