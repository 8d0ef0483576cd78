import { expect, test } from "bun:test";
import { fnv1a32, shardFor } from "../../src/history/shard";

test("FNV-1a matches its published test vectors", () => {
  expect(fnv1a32("")).toBe(0x811c9dc5);
  expect(fnv1a32("a")).toBe(0xe40c292c);
  expect(fnv1a32("foobar")).toBe(0xbf9cf968);
});

test("shard is 1..N, stable, and spreads workflows across shards", () => {
  const counts = new Map<number, number>();
  for (let i = 0; i < 4000; i++) {
    const s = shardFor("ns-id", `wf-${i}`, 4);
    expect(s).toBeGreaterThanOrEqual(1);
    expect(s).toBeLessThanOrEqual(4);
    expect(shardFor("ns-id", `wf-${i}`, 4)).toBe(s);
    counts.set(s, (counts.get(s) ?? 0) + 1);
  }
  for (const n of counts.values()) expect(n).toBeGreaterThan(800);
});

test("shard counts that are multiples route consistently (hash % 8 determines hash % 4)", () => {
  for (let i = 0; i < 200; i++) {
    const eight = shardFor("n", `w${i}`, 8) - 1;
    expect(shardFor("n", `w${i}`, 4) - 1).toBe(eight % 4);
  }
});
