import { and, eq, sql } from "drizzle-orm";
import { ulid } from "ulid";
import type { Config } from "../config/schema";
import { hostPort } from "../host-port";
import type { Db } from "../persistence/database";
import { clusterMetadata, shards } from "../persistence/schema";

/** This cluster as persisted: the facts that must never change once set. */
export interface CurrentCluster {
  clusterName: string;
  clusterId: string;
  rpcAddress: string;
  historyShardCount: number;
  failoverVersionIncrement: number;
  initialFailoverVersion: number;
  isGlobalNamespaceEnabled: boolean;
  masterClusterName: string;
  createdAt: Date;
}

/** The persisted metadata disagrees with the config in a way that cannot be changed. */
export class ClusterMismatchError extends Error {
  override name = "ClusterMismatchError";
}

/**
 * On first start, persists the cluster's identity; on later starts, refuses a config
 * whose shard count, name, increment or initial version differs (they can never change).
 * Servers starting at once on one database take turns: the first persists it, the others
 * check their config against it.
 */
export async function bootstrapCluster(db: Db, config: Config): Promise<CurrentCluster> {
  const meta = config.clusterMetadata;
  const own = { ...meta.clusterInformation[meta.currentClusterName]! };
  const rpc = config.services.frontend.rpc;
  if (!own.rpcAddress) own.rpcAddress = hostPort(rpc.bindOnIP, rpc.port);
  const shardCount = config.persistence.numHistoryShards;
  const row = await db.transaction(async (tx) => {
    // FOR UPDATE below locks no row on a new database: two first starts both inserted, the
    // second failing on the primary key (or, with other names, two current clusters).
    await tx.execute(sql`lock table ${clusterMetadata} in share row exclusive mode`);
    const [existing] = await tx.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, true)).for("update");
    if (existing) {
      checkUnchanged(existing, meta.currentClusterName, shardCount, meta.failoverVersionIncrement, own.initialFailoverVersion);
      const [updated] = await tx
        .update(clusterMetadata)
        .set({ rpcAddress: own.rpcAddress, isGlobalNamespaceEnabled: meta.enableGlobalNamespace, updatedAt: new Date() })
        .where(eq(clusterMetadata.clusterName, existing.clusterName))
        .returning();
      return updated!;
    }
    const [created] = await tx
      .insert(clusterMetadata)
      .values({
        clusterName: meta.currentClusterName,
        clusterId: ulid(),
        isCurrent: true,
        rpcAddress: own.rpcAddress,
        historyShardCount: shardCount,
        failoverVersionIncrement: meta.failoverVersionIncrement,
        initialFailoverVersion: own.initialFailoverVersion,
        isGlobalNamespaceEnabled: meta.enableGlobalNamespace,
      })
      .returning();
    await tx
      .insert(shards)
      .values(Array.from({ length: shardCount }, (_, i) => ({ shardId: i + 1 })))
      .onConflictDoNothing();
    return created!;
  });
  const [{ count }] = (await db.select({ count: sql<number>`count(*)::int` }).from(shards)) as [{ count: number }];
  if (count !== shardCount) throw new ClusterMismatchError(`database has ${count} shard rows, expected ${shardCount}`);
  return {
    clusterName: row.clusterName,
    clusterId: row.clusterId,
    rpcAddress: row.rpcAddress,
    historyShardCount: row.historyShardCount,
    failoverVersionIncrement: row.failoverVersionIncrement,
    initialFailoverVersion: row.initialFailoverVersion,
    isGlobalNamespaceEnabled: row.isGlobalNamespaceEnabled,
    masterClusterName: meta.masterClusterName,
    createdAt: row.createdAt,
  };
}

function checkUnchanged(
  row: typeof clusterMetadata.$inferSelect,
  name: string,
  shardCount: number,
  increment: number,
  initial: number,
): void {
  const refuse = (what: string, stored: unknown, configured: unknown) => {
    throw new ClusterMismatchError(
      `${what} is ${configured} in the config but ${stored} in the database; it can never change for a cluster (use a new database for a new cluster)`,
    );
  };
  if (row.clusterName !== name) refuse("clusterMetadata.currentClusterName", row.clusterName, name);
  if (row.historyShardCount !== shardCount) refuse("persistence.numHistoryShards", row.historyShardCount, shardCount);
  if (row.failoverVersionIncrement !== increment) {
    refuse("clusterMetadata.failoverVersionIncrement", row.failoverVersionIncrement, increment);
  }
  if (row.initialFailoverVersion !== initial) {
    refuse(`clusterMetadata.clusterInformation.${name}.initialFailoverVersion`, row.initialFailoverVersion, initial);
  }
}

/**
 * Resolves when db holds this cluster's identity, else rejects: the health check's ping. A
 * database dropped and made again empty under a running server (or another cluster's put in its
 * place) answers `select 1`, and health said SERVING while every request failed there.
 */
export async function pingIdentity(db: Db, clusterId: string): Promise<void> {
  const held = await db.select({ id: clusterMetadata.clusterId }).from(clusterMetadata).where(and(eq(clusterMetadata.isCurrent, true), eq(clusterMetadata.clusterId, clusterId)));
  if (held.length === 0) throw new Error(`the database holds no cluster ${clusterId}`);
}
