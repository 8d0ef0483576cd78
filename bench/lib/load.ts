import { summarize, type LatencySummary } from "./percentiles";

/** One closed-loop load phase: `clients` loops each awaiting `op` back to back. */
export interface LoadOptions {
  clients: number;
  /** Unmeasured run-in before the measured window. */
  warmupMs: number;
  durationMs: number;
  /** One operation by client `client` (0-based), its `seq`-th call (0-based, per client). */
  op: (client: number, seq: number) => Promise<unknown>;
}

/** What a phase measured; latencies only of calls that started in the measured window. */
export interface LoadResult {
  clients: number;
  ops: number;
  errors: number;
  /** From the window's start until the last measured call returned. */
  elapsedS: number;
  opsPerSec: number;
  latencyMs: LatencySummary;
  firstError?: string;
}

/** Runs the phase; failed calls are counted, not timed, and do not stop the phase. */
export async function runLoad({ clients, warmupMs, durationMs, op }: LoadOptions): Promise<LoadResult> {
  const measureFrom = performance.now() + warmupMs;
  const end = measureFrom + durationMs;
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  let lastDone = measureFrom;
  const loop = async (client: number) => {
    for (let seq = 0; ; seq++) {
      const t0 = performance.now();
      if (t0 >= end) return;
      let failed = false;
      try {
        await op(client, seq);
      } catch (e) {
        failed = true;
        if (t0 >= measureFrom) firstError ??= (e as Error).message;
      }
      const t1 = performance.now();
      if (t0 < measureFrom) continue;
      if (failed) errors++;
      else latencies.push(t1 - t0);
      if (t1 > lastDone) lastDone = t1;
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, i) => loop(i)));
  const elapsedS = (lastDone - measureFrom) / 1000;
  return {
    clients,
    ops: latencies.length,
    errors,
    elapsedS,
    opsPerSec: elapsedS > 0 ? latencies.length / elapsedS : 0,
    latencyMs: summarize(latencies),
    firstError,
  };
}
