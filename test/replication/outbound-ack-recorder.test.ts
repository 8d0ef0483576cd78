import { describe, expect, test } from "bun:test";
import { createEventNotifier } from "../../src/history/notifier";
import type { Db } from "../../src/persistence/database";
import { createOutboundAckRecorder, listenForAckChange } from "../../replication/ack-levels";
import { eventually } from "../support/eventually";

/** A database that only records the outbound ack upserts. */
function fakeDb() {
  const saved: { shardId: number; ackLevel: number }[] = [];
  const db = {
    insert: () => ({
      values: (v: { shardId: number; ackLevel: number }) => ({
        onConflictDoUpdate: async () => void saved.push({ shardId: v.shardId, ackLevel: v.ackLevel }),
      }),
    }),
  } as unknown as Db;
  return { db, saved };
}

describe("outbound ack recorder", () => {
  test("AcksOfEveryPollAreSavedAtMostOncePerInterval: the last one wins after the interval", async () => {
    const { db, saved } = fakeDb();
    const acks = createOutboundAckRecorder({ db, notifier: createEventNotifier(), intervalMs: 100 });
    await acks.record("clusterB", 1, 10);
    await acks.record("clusterB", 1, 20);
    await acks.record("clusterB", 1, 30);
    await acks.record("clusterB", 2, 5);
    expect(saved).toEqual([{ shardId: 1, ackLevel: 10 }, { shardId: 2, ackLevel: 5 }]);
    await eventually(() => expect(saved.at(-1)).toEqual({ shardId: 1, ackLevel: 30 }), { timeout: 2_000 });
    expect(saved).toHaveLength(3);
    await acks.stop();
  });

  test("AFailoverWaitingForThePeerGetsHeldBackAcksAtOnce", async () => {
    const { db, saved } = fakeDb();
    const notifier = createEventNotifier();
    const acks = createOutboundAckRecorder({ db, notifier, intervalMs: 60_000 });
    await acks.record("clusterB", 1, 10);
    await acks.record("clusterB", 1, 20); // held back for a minute
    const t0 = performance.now();
    await listenForAckChange(notifier, "clusterB", 5_000).woke;
    expect(performance.now() - t0).toBeLessThan(1_000);
    expect(saved.at(-1)).toEqual({ shardId: 1, ackLevel: 20 });
    // While the failover waits, acks are saved on arrival.
    await acks.record("clusterB", 1, 25);
    expect(saved.at(-1)).toEqual({ shardId: 1, ackLevel: 25 });
    await acks.stop();
  });

  test("StopSavesWhatIsHeldBack", async () => {
    const { db, saved } = fakeDb();
    const acks = createOutboundAckRecorder({ db, notifier: createEventNotifier(), intervalMs: 60_000 });
    await acks.record("clusterB", 3, 1);
    await acks.record("clusterB", 3, 7);
    await acks.stop();
    expect(saved.at(-1)).toEqual({ shardId: 3, ackLevel: 7 });
  });
});
