import { describe, expect, test } from "bun:test";
import type { ExecutionRow } from "../../src/history/execution-store";
import type { RunWrites } from "../../replication/applier";
import { createRunCache } from "../../replication/run-cache";

const key = (i: number) => ({ namespaceId: "ns", workflowId: `w${i}`, runId: `r${i}` });

function row(i: number, over: Partial<ExecutionRow> = {}): ExecutionRow {
  return {
    ...key(i), shardId: 1, workflowType: "T", taskQueue: "q", status: "RUNNING", startTime: new Date(0), closeTime: null,
    executionTimeoutMs: 0, nextEventId: 2, lastWriteVersion: 1, versionHistory: [{ eventId: 1, version: 1 }], cancelRequested: false, dbVersion: 1, ...over,
  };
}

/** A committed apply that saved run i's state from prev, moving it to nextEventId. */
const saved = (prev: ExecutionRow, nextEventId: number): RunWrites => {
  const { namespaceId: _n, workflowId: _w, runId: _r, shardId: _s, dbVersion: _d, ...state } = prev;
  return { save: { prev, next: { ...state, nextEventId } }, events: [], requestIds: [] };
};
/** A committed apply that created run i. */
const inserted = (i: number): RunWrites => {
  const { dbVersion: _d, ...insert } = row(i);
  return { insert, events: [], requestIds: [] };
};

describe("run cache: the rows this process's applies left, for the next page in one round trip", () => {
  test("KeepsEachRunAsItsCommitLeftIt: a saved state bumps db_version, a new run starts at the column defaults", () => {
    const cache = createRunCache();
    cache.committed([inserted(1)]);
    expect(cache.get(key(1))).toEqual(row(1));
    cache.committed([saved(cache.get(key(1))!, 7)]);
    expect(cache.get(key(1))).toEqual(row(1, { nextEventId: 7, dbVersion: 2 }));
    // Writes that leave no row (events of a duplicate) change nothing.
    cache.committed([{ events: [], requestIds: [] }]);
    expect(cache.size).toBe(1);
  });

  test("StaysWithinItsLimit: the least recently used run goes first, and a read counts as a use", () => {
    const cache = createRunCache(3);
    cache.committed([1, 2, 3].map(inserted));
    cache.get(key(1));
    cache.committed([inserted(4)]);
    expect([1, 2, 3, 4].map((i) => cache.get(key(i)) !== undefined)).toEqual([true, false, true, true]);
    for (let i = 5; i < 1000; i++) cache.committed([inserted(i)]);
    expect(cache.size).toBe(3);
  });

  test("ForgetsRunsAFailedOrFullApplyTouched", () => {
    const cache = createRunCache();
    cache.committed([1, 2].map(inserted));
    cache.forget([key(1)]);
    expect([cache.get(key(1)), cache.get(key(2))?.runId]).toEqual([undefined, "r2"]);
  });
});
