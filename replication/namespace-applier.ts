import { and, eq } from "drizzle-orm";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { NamespaceState, type NamespaceDescription } from "../src/gen/tern/workflow/v1/namespace_pb";
import { lockNamespaceBarrier } from "../src/history/namespace-guard";
import type { Tx } from "../src/persistence/database";
import { namespaces, type FailoverHistoryEntry } from "../src/persistence/schema";

type NamespaceRow = typeof namespaces.$inferSelect;

/** What applying one namespace task did here. */
export interface AppliedNamespace {
  /** collided: not created, a namespace of its name is here with another id (collidesWith). */
  outcome: "created" | "updated" | "skipped" | "collided";
  record?: NamespaceRow;
  /** The task made this cluster the namespace's active cluster. */
  activated: boolean;
  /**
   * This cluster was added to the namespace after it was registered: executions that
   * existed before reach it only through backfill (a member since registration, config
   * version 0, got every write through replication).
   */
  joined?: boolean;
  /** This cluster was taken out of the namespace's clusters (it keeps its copy). */
  left?: boolean;
  /** The id of the namespace here of the name the task's namespace has (outcome collided). */
  collidesWith?: string;
}

/** The replicated part of a namespace (never replicationState: HANDOVER is local). */
function fieldsOf(d: NamespaceDescription) {
  const info = d.namespaceInfo!;
  const ttl = d.config?.workflowExecutionRetentionTtl;
  return {
    config: {
      name: info.name,
      state: NamespaceState[info.state] ?? "REGISTERED",
      description: info.description,
      ownerEmail: info.ownerEmail,
      data: { ...info.data },
      retentionSeconds: ttl ? Number(ttl.seconds) : 0,
      clusters: [...(d.replicationConfig?.clusters ?? [])],
      configVersion: Number(d.configVersion),
    },
    failover: {
      activeClusterName: d.replicationConfig?.activeClusterName ?? "",
      failoverVersion: Number(d.failoverVersion),
      failoverHistory: d.failoverHistory.map(
        (f): FailoverHistoryEntry => ({
          time: f.failoverTime ? timestampDate(f.failoverTime).toISOString() : new Date(0).toISOString(),
          version: Number(f.failoverVersion),
          from: f.fromCluster,
          to: f.toCluster,
          // Left out, not false, when the source did not say (an entry from before it was kept).
          ...(f.forced === undefined ? {} : { forced: f.forced }),
        }),
      ),
    },
  };
}

/**
 * Applies one namespace task in the caller's transaction, idempotent and gated by
 * version (DESIGN.md section 2): config only if its configVersion is newer (or the same and
 * its failoverVersion newer), the active cluster only if its failoverVersion is newer;
 * created (same id) only where listed. joinsHere: the source says the change adds this
 * cluster to the namespace's clusters (NamespaceReplicationTask.joins_asking_cluster).
 */
export async function applyNamespaceTask(tx: Tx, currentCluster: string, d: NamespaceDescription, now: Date, joinsHere = false): Promise<AppliedNamespace> {
  const id = d.namespaceInfo?.id;
  if (!id || !d.isGlobalNamespace) return { outcome: "skipped", activated: false };
  const { config, failover } = fieldsOf(d);
  const [local] = await tx.select().from(namespaces).where(eq(namespaces.id, id)).for("update");
  if (!local) {
    if (!config.clusters.includes(currentCluster)) return { outcome: "skipped", activated: false };
    // Shared lock: a delete of the copy in the way (delete.ts, for update) waits for the hold to commit, and its retry sees it.
    const [clash] = await tx.select({ id: namespaces.id }).from(namespaces).where(eq(namespaces.name, config.name)).for("share");
    // Temporal's ErrNameUUIDCollision: the caller holds the task (namespace-held.ts), never replaces the copy here.
    if (clash) return { outcome: "collided", activated: false, collidesWith: clash.id };
    const [created] = await tx
      .insert(namespaces)
      .values({
        id,
        ...config,
        ...failover,
        isGlobal: true,
        replicationState: "NORMAL",
        createdAt: d.createTime ? timestampDate(d.createTime) : now,
        updatedAt: now,
      })
      .returning();
    return { outcome: "created", record: created, activated: failover.activeClusterName === currentCluster, joined: config.configVersion > 0 };
  }
  const takeFailover = failover.failoverVersion > local.failoverVersion;
  // At the same config version, the config written at the higher failover version: a forced
  // failover and a change on the old active cluster, made apart, each reach the same config
  // version, and taking neither left the clusters holding different configs for good.
  const takeConfig = config.configVersion > local.configVersion || (config.configVersion === local.configVersion && takeFailover);
  if (!takeConfig && !takeFailover) return { outcome: "skipped", record: local, activated: false };
  // A change of the active cluster is ordered against writes and conflict resolution here.
  if (takeFailover) await lockNamespaceBarrier(tx, id);
  const [saved] = await tx
    .update(namespaces)
    .set({ ...(takeConfig ? config : {}), ...(takeFailover ? failover : {}), updatedAt: now })
    .where(and(eq(namespaces.id, id), eq(namespaces.configVersion, local.configVersion), eq(namespaces.failoverVersion, local.failoverVersion)))
    .returning();
  if (!saved) throw new Error(`namespace ${local.name} changed while a replicated change was applied; will retry`);
  const activated = takeFailover && failover.activeClusterName === currentCluster && local.activeClusterName !== currentCluster;
  // A copy that still lists this cluster may have missed it leaving: taken out and removed
  // while down, it kept its copy, and the source cleaned up the tasks of what it missed since.
  const joined = takeConfig && config.clusters.includes(currentCluster) && (!local.clusters.includes(currentCluster) || joinsHere);
  const left = takeConfig && !config.clusters.includes(currentCluster) && local.clusters.includes(currentCluster);
  return { outcome: "updated", record: saved, activated, joined, left };
}
