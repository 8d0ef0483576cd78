import { summarize, type LatencySummary } from "./percentiles";

/** An open-loop phase: operations scheduled at a fixed rate, at most `clients` in flight. */
export interface PacedOptions {
  /** Operations per second. */
  rate: number;
  clients: number;
  durationMs: number;
  op: (client: number, seq: number) => Promise<unknown>;
  /** Ends the phase early when aborted (e.g. a phase that runs until caught up). */
  signal?: AbortSignal;
}

export interface PacedResult {
  ops: number;
  errors: number;
  elapsedS: number;
  opsPerSec: number;
  latencyMs: LatencySummary;
  /** Operations that started later than their slot by more than 100 ms (the clients could not keep the rate). */
  late: number;
  firstError?: string;
}

/** The start time (ms after the phase began) of operation n at `rate` per second. */
export const slotOf = (n: number, rate: number): number => (n * 1000) / rate;

/** Runs the phase; each client takes the next slot, waits for it, and runs the op. */
export async function runPaced({ rate, clients, durationMs, op, signal }: PacedOptions): Promise<PacedResult> {
  const t0 = performance.now();
  const latencies: number[] = [];
  let next = 0;
  let errors = 0;
  let late = 0;
  let firstError: string | undefined;
  const loop = async (client: number) => {
    for (let seq = 0; ; seq++) {
      const n = next++;
      const due = t0 + slotOf(n, rate);
      if (due - t0 >= durationMs || signal?.aborted) return;
      const wait = due - performance.now();
      if (wait > 0) await Bun.sleep(wait);
      else if (wait < -100) late++;
      if (signal?.aborted) return;
      const start = performance.now();
      try {
        await op(client, seq);
        latencies.push(performance.now() - start);
      } catch (e) {
        errors++;
        firstError ??= (e as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, i) => loop(i)));
  const elapsedS = (performance.now() - t0) / 1000;
  return { ops: latencies.length, errors, elapsedS, opsPerSec: latencies.length / elapsedS, latencyMs: summarize(latencies), late, firstError };
}
