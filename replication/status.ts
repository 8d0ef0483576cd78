import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { and, asc, eq, gt, sql } from "drizzle-orm";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import {
  GetReplicationStatusResponseSchema,
  type GetReplicationStatusResponse,
  type ShardReplicationStatus,
  type UnconnectedNamespaceMember,
} from "../src/gen/tern/admin/v1/service_pb";
import type { Db } from "../src/persistence/database";
import { clusterMetadata, namespaces, replicationAckLevels, replicationTasks } from "../src/persistence/schema";
import { heldSummary } from "./namespace-held";
import { lastTaskIds } from "./outbox";
import { tasksBehind } from "./outbound-lag";
import { listsClusters } from "../src/namespace/lists-clusters";
import type { Heard } from "./inbound-heard";
import { inboundLagMs, inboundTasksBehind, type InboundProgress } from "./receiver";
import { forwardedCallsMessage, type ForwardedCallsSummary } from "../src/frontend/redirection-outcomes";

export interface ReplicationStatusDeps {
  db: Db;
  cluster: CurrentCluster;
  /** The manager's live state of a remote ("connected", "disabled", "error: ..."). */
  connectionState: (remote: string) => string;
  /** What this process's receiver last saw of a remote shard. */
  inboundProgress: (remote: string, shardId: number) => InboundProgress | undefined;
  /** When the history receiver last heard from a remote, whether its lag is unknown (a call failed since, or it is overdue), and why its calls fail (receiver.ts). */
  inboundHeard: (remote: string) => Heard;
  /** The same of namespace replication's polls, with why they fail (namespace-receiver.ts). */
  namespaceHeard: (remote: string) => Heard;
  /** What became of the workflow calls this server forwarded to a remote lately (redirection-outcomes.ts). */
  forwardedCalls: (remote: string) => ForwardedCallsSummary;
  /** DLQ entries per source cluster. */
  dlqSizes: () => Promise<Map<string, number>>;
  now?: () => number;
}

type AckRow = typeof replicationAckLevels.$inferSelect;
type ShardStatus = Omit<ShardReplicationStatus, "$typeName">;
type UnconnectedMember = Omit<UnconnectedNamespaceMember, "$typeName">;

/** AdminService.GetReplicationStatus: positions and lag per remote cluster, both directions. */
export function createReplicationStatus(deps: ReplicationStatusDeps) {
  const { db, cluster, connectionState, inboundProgress, inboundHeard, namespaceHeard, forwardedCalls, dlqSizes, now = Date.now } = deps;
  /** What this cluster applied of the remote's shards. */
  function inbound(remote: typeof clusterMetadata.$inferSelect, acks: AckRow[]): ShardStatus[] {
    const rows = historyAcksByShard(acks, "inbound");
    return Array.from({ length: remote.historyShardCount }, (_, i) => {
      const shardId = i + 1;
      const row = rows.get(shardId);
      const seen = inboundProgress(remote.clusterName, shardId);
      const max = Math.max(seen?.maxTaskId ?? 0, row?.maxTaskId ?? 0);
      const acked = Math.max(seen?.ackLevel ?? 0, row?.ackLevel ?? 0);
      const since = seen?.oldestUnapplied ?? row?.lastAppliedCreatedAt ?? undefined;
      const p = { maxTaskId: max, ackLevel: acked, sentAfter: seen?.sentAfter };
      return shardStatus(shardId, max, acked, inboundTasksBehind(p), inboundLagMs(p, since, now()));
    });
  }

  /**
   * What the remote acked of this cluster's shards, with how many tasks past its ack the queue
   * still holds (tasksBehind, as replication_outbound_tasks_lag counts them) and the age of the oldest.
   */
  async function outbound(remote: string, acks: AckRow[], maxima: Map<number, number>): Promise<ShardStatus[]> {
    const t = replicationTasks;
    const a = replicationAckLevels;
    const oldest = await db
      .select({
        shardId: t.shardId,
        at: sql<number>`extract(epoch from min(${t.createdAt})) * 1000`.mapWith(Number),
        held: sql<number>`count(*)`.mapWith(Number),
        first: sql<number>`min(${t.taskId})`.mapWith(Number),
      })
      .from(t)
      .leftJoin(a, and(eq(a.remoteCluster, remote), eq(a.direction, "outbound"), eq(a.queue, "history"), eq(a.shardId, t.shardId)))
      .where(gt(t.taskId, sql`coalesce(${a.ackLevel}, 0)`))
      .groupBy(t.shardId);
    const rows = historyAcksByShard(acks, "outbound");
    const unacked = new Map(oldest.map((o) => [o.shardId, o]));
    return [...maxima].map(([shardId, max]) => {
      const acked = rows.get(shardId)?.ackLevel ?? 0;
      const at = unacked.get(shardId)?.at;
      // At most the ids as the maxima read them (a task committed since is not counted), at most
      // the tasks held (a namespace deleted here took its tasks, wherever they were in the queue).
      const lag = Math.min(tasksBehind(max, acked, unacked.get(shardId)?.first), unacked.get(shardId)?.held ?? 0);
      return shardStatus(shardId, max, acked, lag, lag > 0 && at ? Math.max(0, Math.round(now() - at)) : 0);
    });
  }

  /** The members of the global namespaces listing this cluster that are no remote of it. */
  async function unconnected(remotes: Set<string>): Promise<UnconnectedMember[]> {
    const n = namespaces;
    const rows = await db
      .select({ name: n.name, clusters: n.clusters, active: n.activeClusterName })
      .from(n)
      .where(and(eq(n.isGlobal, true), listsClusters(cluster.clusterName)))
      .orderBy(asc(n.name));
    return rows.flatMap((r) =>
      (r.clusters as string[]).filter((c) => c !== cluster.clusterName && !remotes.has(c)).map((c) => ({ namespace: r.name, clusterName: c, active: r.active === c })),
    );
  }

  async function get(): Promise<GetReplicationStatusResponse> {
    const [remotes, acks, maxima, dlq] = await Promise.all([
      db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, false)).orderBy(asc(clusterMetadata.clusterName)),
      db.select().from(replicationAckLevels),
      lastTaskIds(db),
      dlqSizes(),
    ]);
    const out = [];
    for (const remote of remotes) {
      const mine = acks.filter((a) => a.remoteCluster === remote.clusterName);
      const ns = mine.find((a) => a.direction === "inbound" && a.queue === "namespace");
      // A source not heard from lately (the link down) may have written tasks this cluster cannot see;
      // its namespace tasks too, or those alone when only its namespace polls fail.
      const heard = inboundHeard(remote.clusterName);
      const nsHeard = namespaceHeard(remote.clusterName);
      // Paused: nothing is asked of it, so what it wrote since is not seen either (the last answer
      // stayed fresh for up to 12 s, the lag shown as 0 meanwhile).
      const unknown = heard.stale || !remote.enableConnection;
      const why = remote.enableConnection ? undefined : `${cluster.clusterName}'s connection to ${remote.clusterName} is disabled`;
      out.push({
        clusterName: remote.clusterName,
        connectionState: connectionState(remote.clusterName),
        enableConnection: remote.enableConnection,
        inbound: inbound(remote, mine),
        outbound: await outbound(remote.clusterName, mine, maxima),
        namespaceMaxTaskId: BigInt(ns?.maxTaskId ?? 0),
        namespaceAckedTaskId: BigInt(ns?.ackLevel ?? 0),
        namespaceLagTasks: BigInt(Math.max(0, (ns?.maxTaskId ?? 0) - (ns?.ackLevel ?? 0))),
        dlqSize: BigInt(dlq.get(remote.clusterName) ?? 0),
        inboundHeardAt: heard.at && timestampFromDate(heard.at),
        inboundLagUnknown: unknown,
        namespaceHeardAt: nsHeard.at && timestampFromDate(nsHeard.at),
        namespaceLagUnknown: unknown || nsHeard.stale,
        namespaceError: why ?? nsHeard.error ?? "",
        inboundError: why ?? heard.error ?? "",
        forwardedCalls: forwardedCallsMessage(forwardedCalls(remote.clusterName)),
        cleanedPastShards: mine.filter((a) => a.direction === "outbound" && a.queue === "history" && a.cleanedThrough > a.ackLevel).length,
      });
    }
    const missing = await unconnected(new Set(remotes.map((r) => r.clusterName)));
    return create(GetReplicationStatusResponseSchema, { clusterName: cluster.clusterName, remotes: out, unconnected: missing, heldNamespaces: await heldSummary(db) });
  }

  return { get };
}

export type ReplicationStatus = ReturnType<typeof createReplicationStatus>;

/**
 * A remote's history ack rows of one direction by shard. Looked up per shard with find, a
 * status of 16,384 shards (the most a cluster has) compared each shard with every row: 13 to
 * 48 s of the event loop, every request and replication's own work waiting behind it.
 */
function historyAcksByShard(acks: AckRow[], direction: "inbound" | "outbound"): Map<number, AckRow> {
  return new Map(acks.filter((a) => a.direction === direction && a.queue === "history").map((a) => [a.shardId, a]));
}

function shardStatus(shardId: number, max: number, acked: number, lag: number, lagMs: number): ShardStatus {
  return { shardId, maxTaskId: BigInt(max), ackedTaskId: BigInt(acked), lagTasks: BigInt(lag), lagMs: BigInt(Math.round(lagMs)) };
}
