import { and, eq } from "drizzle-orm";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { NamespaceState, type NamespaceDescription } from "../src/gen/tern/workflow/v1/namespace_pb";
import { lockNamespaceBarrier } from "../src/history/namespace-guard";
import type { Tx } from "../src/persistence/database";
import { namespaces, type FailoverHistoryEntry } from "../src/persistence/schema";

type NamespaceRow = typeof namespaces.$inferSelect;

/** What applying one namespace task did here. */
export interface AppliedNamespace {
  /**
   * collided: not created, a namespace of its name is here with another id (collidesWith).
   * refused: a graceful switch made from a failover version below the one held here (refusedSwitch).
   */
  outcome: "created" | "updated" | "skipped" | "collided" | "refused";
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
          ...(f.fromFailoverVersion === undefined ? {} : { fromVersion: Number(f.fromFailoverVersion) }),
        }),
      ),
    },
  };
}

/** The graceful switch the namespace's current failover is (newest history entry first), with the version it was made from; or undefined. */
function currentSwitch(history: FailoverHistoryEntry[], failoverVersion: number): (FailoverHistoryEntry & { fromVersion: number }) | undefined {
  const last = history[0];
  return last && last.forced === false && last.version === failoverVersion && last.fromVersion !== undefined ? { ...last, fromVersion: last.fromVersion } : undefined;
}

/**
 * A graceful switch made from a failover version below the one held here, heard from another
 * cluster than its target: a failover made elsewhere (forced) reached this cluster after the
 * switch's issuer last asked, and the switch, its version the next above the one it was made
 * from, could top it (A at 1 to C: 3, over B's forced 2) and move B's writes at 2 off their
 * branch. Refused; its target is the one that says whether it took it: from the target (its
 * state once it took it) it is taken, the higher version winning as anywhere.
 */
function refusedSwitch(local: NamespaceRow, failover: ReturnType<typeof fieldsOf>["failover"], source: string | undefined): boolean {
  const sw = currentSwitch(failover.failoverHistory, failover.failoverVersion);
  return !!sw && source !== sw.to && local.failoverVersion > sw.fromVersion;
}

/**
 * Whether the task is the refusal of the graceful switch held here, told by its target (refusedSwitch
 * there re-queues what it holds): the target, which never took the switch, holds the namespace
 * above the version it was made from and below its own. The switch held here is undone: the
 * target's namespace is taken whole, its lower failover version too. No write was made at the
 * switch's version: only its target would have, and it never took it.
 */
function refusalOfSwitchHere(local: NamespaceRow, failoverVersion: number, source: string | undefined): boolean {
  const sw = currentSwitch(local.failoverHistory, local.failoverVersion);
  return !!sw && source === sw.to && failoverVersion > sw.fromVersion && failoverVersion < local.failoverVersion;
}

/**
 * Applies one namespace task in the caller's transaction, idempotent and gated by
 * version (DESIGN.md section 2): config only if its configVersion is newer (or the same and
 * its failoverVersion newer), the active cluster only if its failoverVersion is newer;
 * created (same id) only where listed. joinsHere: the source says the change adds this
 * cluster to the namespace's clusters (NamespaceReplicationTask.joins_asking_cluster).
 * source: the cluster the task came from, for a graceful switch's (refusedSwitch, refusalOfSwitchHere).
 */
export async function applyNamespaceTask(tx: Tx, currentCluster: string, d: NamespaceDescription, now: Date, joinsHere = false, source?: string): Promise<AppliedNamespace> {
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
  const undone = refusalOfSwitchHere(local, failover.failoverVersion, source);
  const takeFailover = failover.failoverVersion > local.failoverVersion || undone;
  if (takeFailover && !undone && refusedSwitch(local, failover, source)) return { outcome: "refused", record: local, activated: false };
  // At the same config version, the config written at the higher failover version: a forced
  // failover and a change on the old active cluster, made apart, each reach the same config
  // version, and taking neither left the clusters holding different configs for good.
  const takeConfig = config.configVersion > local.configVersion || (config.configVersion === local.configVersion && takeFailover) || undone;
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
