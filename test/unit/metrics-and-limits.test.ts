import { expect, test } from "bun:test";
import { createTokenBucket } from "../../src/frontend/rate-limiter";
import { TIMER_BATCH } from "../../src/history/timer-queue";
import { createMetrics } from "../../src/observability/metrics";

test("token bucket allows a burst, then refuses with a retry hint, then refills", () => {
  const b = createTokenBucket(10, 3);
  const t0 = performance.now();
  expect([b.take(t0), b.take(t0), b.take(t0)]).toEqual([0, 0, 0]);
  const wait = b.take(t0);
  expect(wait).toBeGreaterThan(0);
  expect(wait).toBeLessThanOrEqual(100);
  expect(b.take(t0 + 100)).toBe(0);
  expect(createTokenBucket(0, 1).take()).toBe(0);
});

/** A time at or past from, just under a power of two, where (t0 + 100) - t0 falls short of 100. */
function roundingShortTime(from: number): number {
  for (let power = from; power < from * 2 ** 16; power *= 2) {
    for (let t0 = power - 99.9; t0 < power; t0 += 0.000123) if (t0 + 100 - t0 < 100) return t0;
  }
  throw new Error(`no time past ${from} where (t + 100) - t rounds under 100`);
}

test("token bucket: a caller that waits the wait it was given gets its token, rounding aside", () => {
  const b = createTokenBucket(10, 1);
  // A time t0 after the bucket's start where (t0 + 100) - t0 is under 100 (99.99999999999994,
  // say), so the refill sums to a hair under one token: t0 + 100 rounded at the coarser step of
  // the next power of two, which it passes.
  // Not every power has one on this search's steps (2 ** 12, 2 ** 13, 2 ** 17, 2 ** 19 have
  // none), and which power comes first depends on how long the process has run: the next ones are tried.
  const t0 = roundingShortTime(2 ** Math.ceil(Math.log2(performance.now() + 200)));
  expect(t0 + 100 - t0).toBeLessThan(100);
  expect(b.take(t0)).toBe(0);
  const wait = b.take(t0);
  expect(wait).toBe(100);
  expect(b.take(t0 + wait)).toBe(0);
});

test("metrics render Prometheus text with labels and cumulative buckets", () => {
  const m = createMetrics();
  m.inc("service_requests", { operation: "Start", namespace: "a\"b" });
  m.inc("service_requests", { operation: "Start", namespace: "a\"b" });
  m.observe("service_latency", { operation: "Start", namespace: "x" }, 0.003);
  const text = m.render();
  expect(text).toContain('service_requests{operation="Start",namespace="a\\"b"} 2');
  expect(text).toContain("# TYPE service_latency histogram");
  expect(text).toContain('service_latency_bucket{operation="Start",namespace="x",le="0.0025"} 0');
  expect(text).toContain('service_latency_bucket{operation="Start",namespace="x",le="0.005"} 1');
  expect(text).toContain('service_latency_bucket{operation="Start",namespace="x",le="+Inf"} 1');
  expect(text).toContain("# TYPE workflow_success counter");
});

test("README lists every metric family /metrics renders, with its type, and none it does not", async () => {
  const readme = (await Bun.file(new URL("../../README.md", import.meta.url)).text()).replace(/\s+/g, " ");
  const list = /Every family, its type and its labels (.*?)A `remote_cluster` is/.exec(readme)?.[1] ?? "";
  // "`a`, `b` (counter: ...)": each name takes the type of the parenthesis after it.
  const documented = new Map<string, string>();
  for (const m of list.matchAll(/((?:`[a-z_]+`,? )+)\((counter|gauge|histogram)\b/g)) {
    for (const name of m[1]!.matchAll(/`([a-z_]+)`/g)) documented.set(name[1]!, m[2]!);
  }
  const rendered = new Map([...createMetrics().render().matchAll(/^# TYPE (\w+) (\w+)$/gm)].map((m) => [m[1]!, m[2]!]));
  expect(Object.fromEntries(documented)).toEqual(Object.fromEntries(rendered));
});

// Was: README said only that timeouts fire from a durable queue, nothing of the batches a backlog drains in.
test("README says due timers fire in batches, as many of one namespace per transaction as the timer queue takes", async () => {
  const readme = (await Bun.file(new URL("../../README.md", import.meta.url)).text()).replace(/\s+/g, " ");
  expect(readme).toContain(`due timers fire in batches, up to ${TIMER_BATCH} of one namespace in one transaction`);
});
