import { expect, test } from "bun:test";
import { createTokenBucket } from "../../src/frontend/rate-limiter";
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
