import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { inboundAckRows, loadInboundAcks } from "../../replication/ack-levels";
import { replicationAckLevels } from "../../src/persistence/schema";
import { serverStartTimeout } from "../support/timeouts";
import { useTestDatabase } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(serverStartTimeout);

/** The most history shards a cluster has (persistence.numHistoryShards). */
const SHARDS = 16_384;

for (const store of await testStores()) {
  describe(`inbound acks on ${store}`, () => {
    const opened = useTestDatabase(store);

    // Each stream's start reads its applied position in every shard of the source. Read a shard at
    // a time, two statements each (32,768 at 16,384 shards), they were queued on the server's
    // pool ahead of every request meanwhile: a cluster upsert between two such clusters timed out.
    test("TestInboundAcksOfTheMostShardsAreReadAndMadeInTwoStatements", async () => {
      const { db } = opened.database;
      await db.insert(replicationAckLevels).values({ remoteCluster: "clusterA", direction: "inbound", queue: "history", shardId: 7, ackLevel: 42 });
      const shardIds = Array.from({ length: SHARDS }, (_, i) => i + 1);
      const began = performance.now();
      const acks = await loadInboundAcks(db, "clusterA", shardIds);
      const tookMs = performance.now() - began;
      expect([...acks.keys()]).toEqual(shardIds);
      expect(acks.get(7)).toBe(42);
      expect(acks.get(SHARDS)).toBe(0);
      expect((await inboundAckRows(db)).filter((r) => r.remoteCluster === "clusterA")).toHaveLength(SHARDS);
      // About 0.2 s on PostgreSQL, 0.6 s on PGlite; a shard at a time, 23 s and 17 s (a request meanwhile waited 11 s).
      expect(tookMs).toBeLessThan(5_000);
    });
  });
}
