import { describe, expect, test } from "bun:test";
import { evaluateGoals, formatFigures, lagSummary, ratioOf } from "./replication-report";

describe("replication-report", () => {
  test("lagSummary uses nearest rank", () => {
    const s = lagSummary(Array.from({ length: 100 }, (_, i) => 100 - i));
    expect(s).toEqual({ count: 100, p50: 50, p95: 95, p99: 99, max: 100 });
  });
  test("ratio needs a finite non-zero baseline", () => {
    expect(ratioOf({ figure: "x", value: 10, unit: "ms", baseline: { name: "b", value: 5 } })).toBe(2);
    expect(ratioOf({ figure: "x", value: 10, unit: "ms", baseline: { name: "b", value: 0 } })).toBeNull();
    expect(ratioOf({ figure: "x", value: 10, unit: "ms" })).toBeNull();
  });
  test.each([
    [{ lagP99Ms: 40 }, 0, "PASS"],
    [{ lagP99Ms: 60 }, 0, "MISS"],
    [{}, 0, "N/A"],
    [{ lagP99Ms: 30, logicalLagP99Ms: 10 }, 1, "MISS"],
    [{ lagP99Ms: 20, logicalLagP99Ms: 10 }, 1, "PASS"],
    [{ bApplyPerSec: 900, aSaturatedWritePerSec: 1000 }, 2, "MISS"],
    [{ catchUpPerSec: 2500, steadyPerSec: 500 }, 3, "PASS"],
    [{ gracefulFailoverMs: 1200 }, 4, "MISS"],
    [{ lostAckedWrites: 0 }, 5, "PASS"],
    [{ lostAckedWrites: Number.NaN }, 5, "N/A"],
  ])("goals %p -> #%p %p", (inputs, index, verdict) => {
    expect(evaluateGoals(inputs)[index]!.verdict).toBe(verdict as "PASS");
  });
  test("the lag goals say where the lag is measured from", () => {
    const [p99, vsLogical] = evaluateGoals({ lagP99Ms: 12, logicalLagP99Ms: 1, lagFrom: "both from the commit" });
    expect(p99!.detail).toBe("p99 12.0 ms, both from the commit");
    expect(vsLogical!.detail).toBe("12.0 ms vs 2 x 1.00 ms, both from the commit");
    expect(evaluateGoals({ lagP99Ms: 12 })[0]!.detail).toBe("p99 12.0 ms");
  });
  test("table shows value, baseline and ratio", () => {
    const t = formatFigures([{ figure: "lag p99", value: 20, unit: "ms", baseline: { name: "logical", value: 10 } }]);
    expect(t).toContain("20.0 ms");
    expect(t).toContain("10.0 ms (logical)");
    expect(t).toContain("2.00x");
  });
});
