import { expect, test } from "bun:test";
import { createMetrics } from "../../src/observability/metrics";

test("replication_latency has buckets fine enough to judge a 50 ms lag goal", () => {
  const m = createMetrics();
  m.observe("replication_latency", { remote_cluster: "a" }, 0.012);
  m.observe("service_latency", { operation: "Start" }, 0.012);
  const text = m.render();
  expect(text).toContain('replication_latency_bucket{remote_cluster="a",le="0.01"} 0');
  expect(text).toContain('replication_latency_bucket{remote_cluster="a",le="0.02"} 1');
  expect(text).toContain('replication_latency_bucket{remote_cluster="a",le="0.75"} 1');
  // Other histograms keep their bounds.
  expect(text).toContain('service_latency_bucket{operation="Start",le="0.025"} 1');
  expect(text).not.toContain('service_latency_bucket{operation="Start",le="0.02"}');
});
