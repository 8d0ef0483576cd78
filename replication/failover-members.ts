import type { RemoteClientPool } from "../src/cluster/remote-client";
import { remoteOf, type ClusterDirectory } from "../src/cluster/directory";
import { loggableError } from "../src/errors";
import type { Db } from "../src/persistence/database";
import { inboundAckRows } from "./ack-levels";

/** Per member of the namespace (neither this cluster nor the target): what was applied of each of its shards. */
export type MembersApplied = Map<string, Map<number, number>>;

export interface FailoverMembersDeps {
  db: Db;
  clusters: ClusterDirectory;
  clients: RemoteClientPool;
  /** Longest wait for the target's answer. */
  timeoutMs?: number;
}

/**
 * A graceful failover's check on the namespace's other members. With three or more clusters,
 * the events this cluster took from a third (written while the namespace was active there) reach
 * the target only from that third, never from here: the target must have applied at least as
 * much of each third's shards as this cluster had at the handover point, or it would be made
 * active without them (its next write on such a run at the new version then wins over them).
 */
export function createFailoverMembersCheck({ db, clusters, clients, timeoutMs = 2_000 }: FailoverMembersDeps) {
  /** What this cluster has applied of the shards of members other than itself and target. */
  async function appliedHere(target: string, members: string[]): Promise<MembersApplied> {
    const here = clusters.current().clusterName;
    const others = new Set(members.filter((m) => m !== here && m !== target));
    const applied: MembersApplied = new Map();
    for (const row of await inboundAckRows(db)) {
      if (row.queue !== "history" || !others.has(row.remoteCluster) || row.ackLevel <= 0) continue;
      applied.set(row.remoteCluster, (applied.get(row.remoteCluster) ?? new Map()).set(row.shardId, row.ackLevel));
    }
    return applied;
  }

  /** What target still lacks of applied, as target's replication status says, or undefined. */
  async function targetLacks(target: string, applied: MembersApplied): Promise<string | undefined> {
    if (!applied.size) return undefined;
    const here = clusters.current().clusterName;
    const row = await remoteOf(clusters, target);
    if (!row) return undefined;
    let status;
    try {
      status = await clients.get(row.rpcAddress).admin.getReplicationStatus({}, { timeoutMs });
    } catch (e) {
      return `cluster ${target} did not say what it applied of the other members' shards (${loggableError(e)})`;
    }
    for (const [member, shards] of applied) {
      // By shard: a find per shard took 0.4 s of the event loop per member at 16,384 shards.
      const inbound = new Map((status.remotes.find((r) => r.clusterName === member)?.inbound ?? []).map((s) => [s.shardId, s.ackedTaskId]));
      for (const [shardId, mine] of shards) {
        const theirs = Number(inbound.get(shardId) ?? 0);
        if (theirs < mine) {
          return `cluster ${target} applied ${member}'s history shard ${shardId} up to task ${theirs}, ${here} up to ${mine}: ` +
            `what ${member} wrote reaches ${target} only from ${member}`;
        }
      }
    }
    return undefined;
  }

  return { appliedHere, targetLacks };
}

export type FailoverMembersCheck = ReturnType<typeof createFailoverMembersCheck>;
