import { describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import type { IncomingTask, RawHistoryFetcher } from "../../replication/apply-errors";
import { fetchOutside } from "../../replication/gap-fetch";
import { HistoryEventSchema } from "../../src/gen/tern/common/v1/common_pb";

const task: IncomingTask = {
  namespaceId: "ns", workflowId: "w", runId: "r", firstEventId: 5, nextEventId: 6, versionHistory: [{ eventId: 5, version: 1 }], events: [],
};

/** A source's raw history: events [first, next) of the run; each call recorded, and whether a transaction was open then. */
function source(open: () => boolean) {
  const calls: { first: number; next: number; inTransaction: boolean }[] = [];
  const fetchRaw: RawHistoryFetcher = async (_task, first, next) => {
    calls.push({ first, next, inTransaction: open() });
    return Array.from({ length: next - first }, (_, i) => create(HistoryEventSchema, { eventId: BigInt(first + i), version: 1n }));
  };
  return { calls, fetchRaw };
}

describe("a gap repair's fetch (fetchOutside)", () => {
  test("runs with no transaction open, and the apply then reads the run afresh: what it still lacks comes from the fetched events", async () => {
    let open = false;
    const { calls, fetchRaw } = source(() => open);
    const lacks: [number, number][] = [
      [2, 5], // the first try: the run ends at event 1
      [3, 5], // after the fetch: another apply added event 2 meanwhile
    ];
    let tries = 0;
    const got = await fetchOutside(fetchRaw, async (fetch) => {
      open = true;
      try {
        const [first, next] = lacks[Math.min(tries++, lacks.length - 1)]!;
        return (await fetch(task, first, next)).map((e) => Number(e.eventId));
      } finally {
        open = false;
      }
    });
    expect(got).toEqual([3, 4]);
    expect(calls).toEqual([{ first: 2, next: 5, inTransaction: false }]);
    expect(tries).toBe(2);
  });

  test("fetches a range it did not fetch before (the run changed otherwise), and fails as the source's call does", async () => {
    const { calls, fetchRaw } = source(() => false);
    let tries = 0;
    const got = await fetchOutside(fetchRaw, async (fetch) => {
      tries++;
      // Once the first range is fetched, a later task of the run lacks more.
      const a = await fetch(task, 2, 4);
      const b = await fetch({ ...task, versionHistory: [{ eventId: 9, version: 1 }] }, 4, 9);
      return [...a, ...b].map((e) => Number(e.eventId));
    });
    expect(got).toEqual([2, 3, 4, 5, 6, 7, 8]);
    expect(calls.map((c) => [c.first, c.next])).toEqual([[2, 4], [4, 9]]);
    expect(tries).toBe(3);

    const refused = new Error("cannot reach cluster clusterA");
    await expect(fetchOutside(() => Promise.reject(refused), (fetch) => fetch(task, 2, 4))).rejects.toBe(refused);
  });

  test("an attempt that lacks several ranges (a page's runs, each with a gap) fetches them all before it tries again, once each", async () => {
    const { calls, fetchRaw } = source(() => false);
    const runs = ["r1", "r2", "r3"].map((runId) => ({ ...task, runId }));
    const log: string[] = [];
    let tries = 0;
    const got = await fetchOutside(fetchRaw, async (fetch) => {
      tries++;
      log.push(`try ${tries} after ${calls.length} fetches`);
      // As a page's apply does: every run asks for its gap (lacksRawHistory) before the attempt fails.
      const results = await Promise.allSettled(runs.map((t) => fetch(t, 2, 5)));
      const lacked = results.find((r) => r.status === "rejected");
      if (lacked) throw (lacked as PromiseRejectedResult).reason;
      return results.map((r) => (r as PromiseFulfilledResult<{ eventId: bigint }[]>).value.map((e) => Number(e.eventId)));
    });
    expect(got).toEqual([[2, 3, 4], [2, 3, 4], [2, 3, 4]]);
    expect(tries).toBe(2);
    expect(log).toEqual(["try 1 after 0 fetches", "try 2 after 3 fetches"]);
    expect(calls.map((c) => [c.first, c.next])).toEqual([[2, 5], [2, 5], [2, 5]]);
  });

  test("a range a wider one of the same run and branch covers is served from it, not fetched again", async () => {
    const { calls, fetchRaw } = source(() => false);
    const later = { ...task, firstEventId: 9, nextEventId: 10, versionHistory: [{ eventId: 9, version: 1 }] };
    let tries = 0;
    const got = await fetchOutside(fetchRaw, async (fetch) => {
      tries++;
      // The run's first task lacks [2, 5); its next one, past the first one's events, lacks up to 9.
      const results = await Promise.allSettled([fetch(task, 2, 5), fetch(later, 2, 9)]);
      const lacked = results.find((r) => r.status === "rejected");
      if (lacked) throw (lacked as PromiseRejectedResult).reason;
      return (results[0] as PromiseFulfilledResult<{ eventId: bigint }[]>).value.map((e) => Number(e.eventId));
    });
    expect(got).toEqual([2, 3, 4]);
    expect(tries).toBe(2);
    expect(calls.map((c) => [c.first, c.next])).toEqual([[2, 9]]);
    // On another branch from event 3 (a version the fetched events do not have), it is fetched.
    const other = { ...task, runId: "r", versionHistory: [{ eventId: 2, version: 1 }, { eventId: 5, version: 2 }] };
    const seen: number[][] = [];
    await fetchOutside(fetchRaw, async (fetch) => {
      const results = await Promise.allSettled([fetch(later, 2, 9), fetch(other, 2, 5)]);
      const lacked = results.find((r) => r.status === "rejected");
      if (lacked) throw (lacked as PromiseRejectedResult).reason;
      seen.push(...results.map((r) => (r as PromiseFulfilledResult<{ eventId: bigint }[]>).value.map((e) => Number(e.eventId))));
    });
    expect(calls.map((c) => [c.first, c.next])).toEqual([[2, 9], [2, 9], [2, 5]]);
    expect(seen).toEqual([[2, 3, 4, 5, 6, 7, 8], [2, 3, 4]]);
  });
});
