import { describe, expect, test } from "bun:test";
import { diffHistogram, histogramAbove, histogramMaxBound, histogramQuantile, parseCounter, parseHistogram } from "./prom-histogram";

const body = (a: number[], sum: number) => `# TYPE replication_latency histogram
replication_latency_bucket{remote_cluster="clusterA",le="0.01"} ${a[0]}
replication_latency_bucket{remote_cluster="clusterA",le="0.05"} ${a[1]}
replication_latency_bucket{remote_cluster="clusterA",le="0.1"} ${a[2]}
replication_latency_bucket{remote_cluster="clusterA",le="+Inf"} ${a[3]}
replication_latency_sum{remote_cluster="clusterA"} ${sum}
replication_latency_count{remote_cluster="clusterA"} ${a[3]}
replication_latency_bucket{remote_cluster="clusterC",le="0.01"} 1000
replication_latency_bucket{remote_cluster="clusterC",le="+Inf"} 1000
replication_latency_count{remote_cluster="clusterC"} 1000
service_latency_bucket{le="0.01"} 5
`;

describe("prom-histogram", () => {
  test("sums a counter's matching series, and not a longer name that starts with it", () => {
    const text = `replication_pages_applied{remote_cluster="clusterA",path="pipelined"} 40
replication_pages_applied{remote_cluster="clusterA",path="full"} 2
replication_pages_applied{remote_cluster="clusterC",path="pipelined"} 7
replication_pages_applied_total 1000
replication_tasks_applied 9
`;
    expect(parseCounter(text, "replication_pages_applied")).toBe(49);
    expect(parseCounter(text, "replication_pages_applied", { remote_cluster: "clusterA", path: "full" })).toBe(2);
    expect(parseCounter(text, "replication_tasks_applied")).toBe(9);
    expect(parseCounter(text, "replication_dlq_size")).toBe(0);
  });
  test("parses only the matching series", () => {
    const h = parseHistogram(body([10, 20, 30, 30], 1.5), "replication_latency", { remote_cluster: "clusterA" });
    expect(h).toEqual({ le: [0.01, 0.05, 0.1, Infinity], cumulative: [10, 20, 30, 30], count: 30, sum: 1.5 });
  });
  test("sums series without a filter", () => {
    expect(parseHistogram(body([1, 1, 1, 1], 0), "replication_latency").count).toBe(1001);
  });
  test("diff keeps only what happened between scrapes", () => {
    const before = parseHistogram(body([10, 20, 30, 30], 1), "replication_latency", { remote_cluster: "clusterA" });
    const after = parseHistogram(body([10, 60, 130, 130], 3), "replication_latency", { remote_cluster: "clusterA" });
    const d = diffHistogram(after, before);
    expect(d.cumulative).toEqual([0, 40, 100, 100]);
    expect(d.count).toBe(100);
    expect(d.sum).toBe(2);
  });
  // Table: cumulative counts [10, 20, 30, 30] over bounds 0.01, 0.05, 0.1, +Inf.
  test.each([
    [0.5, 0.01 + 0.04 * (5 / 10)],
    [1 / 3, 0.01],
    [0.9, 0.05 + 0.05 * (7 / 10)],
    [0.1, 0.01 * (3 / 10)],
  ])("quantile %p interpolates linearly inside its bucket", (q, want) => {
    const h = parseHistogram(body([10, 20, 30, 30], 0), "replication_latency", { remote_cluster: "clusterA" });
    expect(histogramQuantile(h, q)).toBeCloseTo(want, 10);
  });
  test("a rank in +Inf gives the highest finite bound; empty gives NaN", () => {
    const h = parseHistogram(body([0, 0, 1, 2], 0), "replication_latency", { remote_cluster: "clusterA" });
    expect(histogramQuantile(h, 0.99)).toBe(0.1);
    expect(histogramMaxBound(h)).toBe(Infinity);
    expect(histogramQuantile(parseHistogram("", "x"), 0.5)).toBeNaN();
  });
  test("counts the observations above a bucket bound, and none above a bound it has not", () => {
    const h = parseHistogram(body([3, 7, 9, 10], 0.4), "replication_latency", { remote_cluster: "clusterA" });
    expect(histogramAbove(h, 0.01)).toBe(7);
    expect(histogramAbove(h, 0.1)).toBe(1);
    expect(histogramAbove(h, 0.02)).toBe(0);
    expect(histogramAbove(parseHistogram("", "replication_latency"), 0.01)).toBe(0);
  });
});
