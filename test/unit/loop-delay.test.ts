import { expect, test } from "bun:test";
import { histogramAbove, parseHistogram, type Histogram } from "../../bench/lib/prom-histogram";
import { startLoopDelaySampler } from "../../src/observability/loop-delay";
import { createMetrics, type Metrics } from "../../src/observability/metrics";
import { eventually } from "../support/eventually";

/** The sampler's histogram as /metrics renders it. */
const delays = (metrics: Metrics): Histogram => parseHistogram(metrics.render(), "process_event_loop_delay_seconds");

/** Holds this process's event loop for ms: no timer can fire meanwhile. */
function holdTheLoop(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

test("ALoopHeldUpForAQuarterSecondShowsAsADelayOfAtLeastATenthOfASecond", async () => {
  const metrics = createMetrics();
  const sampler = startLoopDelaySampler(metrics, 20);
  try {
    await eventually(() => expect(delays(metrics).count).toBeGreaterThanOrEqual(2));
    const before = delays(metrics);
    // Whenever within the interval the hold starts, the timer due in it fires at least 230 ms late.
    holdTheLoop(250);
    await eventually(() => expect(delays(metrics).count).toBeGreaterThan(before.count));
    // The late sample sits above the 0.1 s bucket.
    expect(histogramAbove(delays(metrics), 0.1)).toBeGreaterThan(histogramAbove(before, 0.1));
  } finally {
    sampler.stop();
  }
});

test("AStoppedSamplerTakesNoMoreSamples", async () => {
  const metrics = createMetrics();
  const sampler = startLoopDelaySampler(metrics, 10);
  await eventually(() => expect(delays(metrics).count).toBeGreaterThanOrEqual(1));
  sampler.stop();
  const stoppedAt = delays(metrics).count;
  // Absence over time: ten intervals with the loop free, and no sample came.
  await new Promise((r) => setTimeout(r, 100));
  expect(delays(metrics).count).toBe(stoppedAt);
});
