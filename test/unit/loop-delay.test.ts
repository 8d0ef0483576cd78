import { expect, test } from "bun:test";
import { startLoopDelaySampler } from "../../src/observability/loop-delay";
import { createMetrics, type Metrics } from "../../src/observability/metrics";
import { eventually } from "../support/eventually";

/** The histogram's sample count and how many samples were at most `le` seconds. */
function delays(metrics: Metrics, le: string): { count: number; atMost: number } {
  const text = metrics.render();
  const count = Number(/^process_event_loop_delay_seconds_count (\d+)$/m.exec(text)?.[1] ?? 0);
  const atMost = Number(new RegExp(`^process_event_loop_delay_seconds_bucket\\{le="${le}"\\} (\\d+)$`, "m").exec(text)?.[1] ?? 0);
  return { count, atMost };
}

/** Holds this process's event loop for ms: no timer can fire meanwhile. */
function holdTheLoop(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

test("ALoopHeldUpForAQuarterSecondShowsAsADelayOfAtLeastATenthOfASecond", async () => {
  const metrics = createMetrics();
  const sampler = startLoopDelaySampler(metrics, 20);
  try {
    await eventually(() => expect(delays(metrics, "0.1").count).toBeGreaterThanOrEqual(2));
    const before = delays(metrics, "0.1");
    // Whenever within the interval the hold starts, the timer due in it fires at least 230 ms late.
    holdTheLoop(250);
    await eventually(() => expect(delays(metrics, "0.1").count).toBeGreaterThan(before.count));
    const after = delays(metrics, "0.1");
    // The late sample sits above the 0.1 s bucket: one more sample in all than at or below it.
    expect(after.count - after.atMost).toBeGreaterThan(before.count - before.atMost);
  } finally {
    sampler.stop();
  }
});

test("AStoppedSamplerTakesNoMoreSamples", async () => {
  const metrics = createMetrics();
  const sampler = startLoopDelaySampler(metrics, 10);
  await eventually(() => expect(delays(metrics, "+Inf").count).toBeGreaterThanOrEqual(1));
  sampler.stop();
  const stoppedAt = delays(metrics, "+Inf").count;
  // Absence over time: ten intervals with the loop free, and no sample came.
  await new Promise((r) => setTimeout(r, 100));
  expect(delays(metrics, "+Inf").count).toBe(stoppedAt);
});
