import { describe, expect, test } from "bun:test";
import { clusterForVersion, isSameCluster, nextFailoverVersion, ownerInitialVersion } from "../../src/cluster/metadata";

describe("failover version arithmetic (DESIGN.md section 1)", () => {
  // inc 10, A initial 1, B initial 2: register on A -> 1; to B -> 2; back to A -> 11; to B -> 12.
  test.each([
    { target: 1, current: 0, inc: 10, want: 1 },
    { target: 2, current: 1, inc: 10, want: 2 },
    { target: 1, current: 2, inc: 10, want: 11 },
    { target: 2, current: 11, inc: 10, want: 12 },
    { target: 2, current: 2, inc: 10, want: 2 },
    { target: 1, current: 1, inc: 100, want: 1 },
    { target: 2, current: 1, inc: 100, want: 2 },
    { target: 1, current: 2, inc: 100, want: 101 },
    { target: 3, current: 101, inc: 100, want: 103 },
    { target: 1, current: 103, inc: 100, want: 201 },
  ])("next($target, $current) with increment $inc is $want", ({ target, current, inc, want }) => {
    expect(nextFailoverVersion(target, current, inc)).toBe(want);
  });

  test("versions only grow over a series of failovers", () => {
    const initial = { A: 1, B: 2, C: 3 } as const;
    let v = 1;
    for (const to of ["B", "A", "C", "B", "B", "A"] as const) {
      const next = nextFailoverVersion(initial[to], v, 100);
      expect(next).toBeGreaterThanOrEqual(v);
      expect(ownerInitialVersion(next, 100)).toBe(initial[to]);
      v = next;
    }
  });

  test("owner and sameCluster", () => {
    const clusters = new Map([["A", 1], ["B", 2]]);
    expect(clusterForVersion(101, 100, clusters)).toBe("A");
    expect(clusterForVersion(202, 100, clusters)).toBe("B");
    expect(clusterForVersion(203, 100, clusters)).toBeUndefined();
    expect(isSameCluster(1, 201, 100)).toBe(true);
    expect(isSameCluster(1, 202, 100)).toBe(false);
  });
});
