/**
 * A background pass run every intervalMs, counted from the end of the previous one, from
 * start() until stop(): a failing pass goes to onError and the next still runs. stop()
 * waits for a pass under way.
 */
export function createPeriodic<T>(pass: () => Promise<T>, o: { intervalMs: number; onDone?: (result: T) => void; onError: (e: unknown) => void }) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running: Promise<T> | undefined;
  let stopped = true;

  async function tick(): Promise<void> {
    try {
      running = pass();
      o.onDone?.(await running);
    } catch (e) {
      o.onError(e);
    } finally {
      running = undefined;
      if (!stopped) timer = setTimeout(tick, o.intervalMs);
    }
  }

  return {
    start(): void {
      stopped = false;
      timer = setTimeout(tick, o.intervalMs);
    },
    async stop(): Promise<void> {
      stopped = true;
      if (timer) clearTimeout(timer);
      await running?.catch(() => {});
    },
  };
}
