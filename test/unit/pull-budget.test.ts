import { describe, expect, test } from "bun:test";
import { FIRST_STREAM_PAGE, MAX_SHARD_PAGE, PULL_BUDGET, nextStreamPage, shardPageSizes, withinBudget } from "../../replication/pull-budget";

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

describe("a pull's tasks across its shards", () => {
  test("FourShardsAskAsBefore: a page each when caught up, the catch-up page for a shard more than a page behind", () => {
    expect(shardPageSizes([0, 0, 0, 0], 200, 1000)).toEqual([200, 200, 200, 200]);
    expect(shardPageSizes([5_000, 0, 150, -3], 200, 1000)).toEqual([1000, 200, 200, 200]);
  });

  test("ManyShardsBehindShareTheBudget: 512 shards in catch-up ask 8,192 tasks, not 512,000", () => {
    const sizes = shardPageSizes(Array(512).fill(10_000), 200, 1000);
    expect(sum(sizes)).toBeLessThanOrEqual(PULL_BUDGET);
    expect(new Set(sizes)).toEqual(new Set([16]));
  });

  test("OneShardBehindAmongManyKeepsItsCatchUpPage, the caught-up ones ask less than a page", () => {
    const backlogs = Array(512).fill(0);
    backlogs[7] = 50_000;
    const sizes = shardPageSizes(backlogs, 200, 1000);
    expect(sizes[7]).toBe(1000);
    expect(sizes[0]).toBe(8);
    expect(sum(sizes)).toBeLessThanOrEqual(PULL_BUDGET);
  });

  test("EveryShardAsksAtLeastOne, however many there are", () => {
    expect(Math.min(...shardPageSizes(Array(16_384).fill(100), 200, 1000))).toBe(1);
    expect(Math.min(...shardPageSizes(Array(16_384).fill(0), 200, 1000))).toBe(1);
  });

  test("TheSourceScalesDownWhatAReceiverAsks: 512 shards of 1,000 fit the budget; what fits is left alone", () => {
    const scaled = withinBudget(Array(512).fill(1000), 0);
    expect(sum(scaled)).toBeLessThanOrEqual(PULL_BUDGET);
    expect(new Set(scaled)).toEqual(new Set([16]));
    expect(withinBudget([0, 50, 5_000], 300)).toEqual([300, 50, MAX_SHARD_PAGE]);
    expect(withinBudget([0], 0)).toEqual([100]);
  });

  test("AStreamsPagesOfAShardGrowWhileItIsBehind: 64, 128, ... up to what the peer asked; a page that caught up starts over at 64", () => {
    const sizes = [FIRST_STREAM_PAGE];
    while (sizes.length < 6) sizes.push(nextStreamPage(sizes.at(-1)!, MAX_SHARD_PAGE, true));
    expect(sizes).toEqual([64, 128, 256, 512, 1000, 1000]);
    expect(nextStreamPage(MAX_SHARD_PAGE, MAX_SHARD_PAGE, false)).toBe(FIRST_STREAM_PAGE);
    expect(nextStreamPage(128, MAX_SHARD_PAGE, false)).toBe(FIRST_STREAM_PAGE);
    expect(nextStreamPage(FIRST_STREAM_PAGE, MAX_SHARD_PAGE, false)).toBe(FIRST_STREAM_PAGE);
    expect(nextStreamPage(16, 16, true)).toBe(16);
    expect(nextStreamPage(16, 16, false)).toBe(16);
  });
});
