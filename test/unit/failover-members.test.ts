import { describe, expect, test } from "bun:test";
import type { RemoteClientPool } from "../../src/cluster/remote-client";
import type { ClusterDirectory } from "../../src/cluster/directory";
import { createFailoverMembersCheck, type MembersApplied } from "../../replication/failover-members";

/** The most history shards a cluster has (persistence.numHistoryShards). */
const SHARDS = 16_384;

describe("graceful failover's check on the other members", () => {
  // A graceful failover compares what the target applied of each third cluster's shards with
  // what this cluster did. It looked each shard up in the target's status with find: about
  // SHARDS^2 / 2 reads (0.4 s of the event loop per member at 16,384 shards, more under load).
  test("TestMembersCheckOfTheMostShardsReadsEachShardOfTheTargetsStatusOnce", async () => {
    let reads = 0;
    const inbound = Array.from({ length: SHARDS }, (_, i) => ({
      get shardId() {
        reads++;
        return i + 1;
      },
      ackedTaskId: i + 1 === SHARDS ? 4n : 5n,
    }));
    const status = { remotes: [{ clusterName: "clusterC", inbound }] };
    const check = createFailoverMembersCheck({
      db: undefined as never,
      clusters: { current: () => ({ clusterName: "clusterA" }), list: async () => [{ clusterName: "clusterB", isCurrent: false, rpcAddress: "127.0.0.1:1" }] } as unknown as ClusterDirectory,
      clients: { get: () => ({ admin: { getReplicationStatus: async () => status } }) } as unknown as RemoteClientPool,
    });
    const applied: MembersApplied = new Map([["clusterC", new Map(Array.from({ length: SHARDS }, (_, i) => [i + 1, 5]))]]);
    expect(await check.targetLacks("clusterB", applied)).toBe(
      `cluster clusterB applied clusterC's history shard ${SHARDS} up to task 4, clusterA up to 5: what clusterC wrote reaches clusterB only from clusterC`,
    );
    expect(reads).toBeLessThanOrEqual(SHARDS);
  });
});
