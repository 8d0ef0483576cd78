import { beforeEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { eq } from "drizzle-orm";
import { createEventNotifier } from "../../src/history/notifier";
import { replicationAckLevels } from "../../src/persistence/schema";
import { createOutboundAckRecorder, listenForAckChange, outboundAcks } from "../../replication/ack-levels";
import { eventually } from "../support/eventually";
import { useTestDatabase } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

for (const store of await testStores()) {
  describe(`outbound ack recorder on ${store}`, () => {
    const opened = useTestDatabase(store);
    beforeEach(async () => {
      await opened.database.db.delete(replicationAckLevels);
    });

    const saved = async () => Object.fromEntries(await outboundAcks(opened.database.db, "clusterB"));
    /** When each shard's ack was last saved: rows saved by one statement share it (now() is the transaction's start). */
    const savedAt = async () => {
      const rows = await opened.database.db.select().from(replicationAckLevels).where(eq(replicationAckLevels.remoteCluster, "clusterB"));
      return Object.fromEntries(rows.map((r) => [r.shardId, r.updatedAt.getTime()]));
    };
    const acked = (pairs: [number, number][]) => pairs.map(([shardId, ack]) => ({ shardId, acked: ack }));

    test("APeersMovedShardsAreSavedInOneStatement, at most once per interval; the last ack of a shard wins", async () => {
      // An interval a loaded host's two records and a read fit in: with 300 ms, a 350 ms delay
      // before the read that expects the acks held (forced by hand) found them saved.
      const acks = createOutboundAckRecorder({ db: opened.database.db, notifier: createEventNotifier(), intervalMs: 3_000 });
      await acks.record("clusterB", acked([[1, 10], [2, 5]]));
      expect(await saved()).toEqual({ 1: 10, 2: 5 });
      // Within the interval: held back, then saved together when it ends.
      await acks.record("clusterB", acked([[1, 20], [2, 5]]));
      await acks.record("clusterB", acked([[1, 30], [3, 4]]));
      expect(await saved()).toEqual({ 1: 10, 2: 5 });
      await eventually(async () => expect(await saved()).toEqual({ 1: 30, 2: 5, 3: 4 }), { timeout: 15_000 });
      const at = await savedAt();
      expect(at[1]).toBe(at[3]!);
      expect(at[2]).toBeLessThan(at[1]!);
      await acks.stop();
    });

    test("AFailoverWaitingForThePeerGetsHeldBackAcksAtOnce, and acks on arrival while it waits", async () => {
      const notifier = createEventNotifier();
      const acks = createOutboundAckRecorder({ db: opened.database.db, notifier, intervalMs: 60_000 });
      await acks.record("clusterB", acked([[1, 10]]));
      await acks.record("clusterB", acked([[1, 20], [2, 7]])); // held back for a minute
      // Saved at once, not at the interval's end a minute away: what woke the wait is that save,
      // found by the read after it (a wall-clock bound on the wake failed on a loaded host).
      await listenForAckChange(notifier, "clusterB", 30_000).woke;
      expect(await saved()).toEqual({ 1: 20, 2: 7 });
      await acks.record("clusterB", acked([[1, 25]]));
      expect(await saved()).toEqual({ 1: 25, 2: 7 });
      await acks.stop();
    });

    test("StopSavesWhatIsHeldBack", async () => {
      const acks = createOutboundAckRecorder({ db: opened.database.db, notifier: createEventNotifier(), intervalMs: 60_000 });
      await acks.record("clusterB", acked([[3, 1]]));
      await acks.record("clusterB", acked([[3, 7], [4, 2]]));
      await acks.stop();
      expect(await saved()).toEqual({ 3: 7, 4: 2 });
    });
  });
}
