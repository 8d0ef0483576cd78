import { fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { and, asc, count, eq, min } from "drizzle-orm";
import { NamespaceReplicationTaskSchema, type HeldNamespace, type NamespaceReplicationTask } from "../src/gen/tern/admin/v1/service_pb";
import type { Db, Tx } from "../src/persistence/database";
import { heldNamespaceTasks as held } from "../src/persistence/schema";

/*
 * Namespace replication tasks held instead of applied. A create whose name this cluster holds with
 * another id (a namespace deleted on its active cluster and registered again there, while this
 * cluster kept its copy: a delete is local) cannot be applied, and retried in place it stopped
 * every namespace change behind it. Temporal answers ErrNameUUIDCollision and puts the task in
 * its namespace DLQ; here it is held, with every later task of that namespace id from the same
 * source, in order, and the others go on. The receiver applies what is held once the copy is gone
 * (namespace-receiver.ts retryHeld): the copy is never replaced without an operator.
 */

/** The first held task of namespaceId from source: later tasks of it wait behind it. */
export async function firstHeld(tx: Tx, source: string, namespaceId: string) {
  const [row] = await tx
    .select({ taskId: held.taskId, localNamespaceId: held.localNamespaceId })
    .from(held)
    .where(and(eq(held.sourceCluster, source), eq(held.namespaceId, namespaceId)))
    .orderBy(asc(held.taskId))
    .limit(1);
  return row;
}

/** Holds task from source in the caller's transaction (the one that moves the ack past it); a repeat is a no-op. */
export async function holdTask(tx: Tx, source: string, task: NamespaceReplicationTask, localNamespaceId: string): Promise<void> {
  const info = task.namespace!.namespaceInfo!;
  await tx
    .insert(held)
    .values({
      sourceCluster: source,
      taskId: Number(task.taskId),
      namespaceId: info.id,
      namespaceName: info.name,
      localNamespaceId,
      task: toJson(NamespaceReplicationTaskSchema, task) as Record<string, unknown>,
    })
    .onConflictDoNothing();
}

/** The namespace ids with held tasks, the longest held first. */
export async function heldNamespaceIds(db: Db): Promise<string[]> {
  const rows = await db.select({ id: held.namespaceId, since: min(held.heldAt) }).from(held).groupBy(held.namespaceId).orderBy(asc(min(held.heldAt)));
  return rows.map((r) => r.id);
}

/** The held tasks of namespaceId, locked until tx ends, each source's in order. */
export async function lockHeld(tx: Tx, namespaceId: string) {
  const rows = await tx.select().from(held).where(eq(held.namespaceId, namespaceId)).orderBy(asc(held.sourceCluster), asc(held.taskId)).for("update");
  return rows.map((r) => ({ source: r.sourceCluster, task: fromJson(NamespaceReplicationTaskSchema, r.task as JsonValue) }));
}

/** Drops one held task once it is applied, in the transaction that applied it. */
export async function releaseHeld(tx: Tx, source: string, taskId: bigint): Promise<void> {
  await tx.delete(held).where(and(eq(held.sourceCluster, source), eq(held.taskId, Number(taskId))));
}

/**
 * Drops the held tasks of namespaceId no newer (config version) than a change that took this
 * cluster out of it: a member out of a namespace takes no change of it, and added back it is sent
 * the namespace as it stands (namespace-sender.ts joinsAskingCluster). How many were dropped.
 */
export async function dropHeld(tx: Tx, namespaceId: string, configVersion: bigint): Promise<number> {
  const moot = (await lockHeld(tx, namespaceId)).filter(({ task }) => task.namespace!.configVersion <= configVersion);
  for (const { source, task } of moot) await releaseHeld(tx, source, task.taskId);
  return moot.length;
}

/**
 * The held namespaces (at most limit) that would list cluster once applied: changes held from it
 * (a namespace active there), or whose newest held change lists it. Refusing its remove on them,
 * as on a namespace here listing it, keeps a namespace listing a removed cluster from applying later.
 */
export async function heldListing(tx: Tx, cluster: string, limit = 5) {
  // Shared: a retry applying held tasks (lockHeld) is waited for, and its namespaces are then applied.
  const rows = await tx.select().from(held).orderBy(asc(held.namespaceId), asc(held.taskId)).for("share");
  const newest = new Map<string, { row: (typeof rows)[number]; ns: NamespaceReplicationTask["namespace"]; from: boolean }>();
  for (const row of rows) {
    const ns = fromJson(NamespaceReplicationTaskSchema, row.task as JsonValue).namespace;
    const seen = newest.get(row.namespaceId);
    const from = row.sourceCluster === cluster || !!seen?.from;
    const later = !seen || newer(ns, seen.ns);
    newest.set(row.namespaceId, later ? { row, ns, from } : { ...seen, from });
  }
  return [...newest.values()]
    .filter(({ ns, from }) => from || ns?.replicationConfig?.clusters.includes(cluster))
    .slice(0, limit)
    .map(({ row, from }) => ({ name: row.namespaceName, id: row.namespaceId, localId: row.localNamespaceId, source: row.sourceCluster, from }));
}

/** Whether a is a later change than b: a higher config version, or the same at a higher failover version (namespace-applier.ts). */
function newer(a: NamespaceReplicationTask["namespace"], b: NamespaceReplicationTask["namespace"]): boolean {
  const [ca, cb] = [a?.configVersion ?? 0n, b?.configVersion ?? 0n];
  return ca > cb || (ca === cb && (a?.failoverVersion ?? 0n) > (b?.failoverVersion ?? 0n));
}

/**
 * Why a forced failover of the namespace ns here is refused, or undefined: another namespace of its
 * name is held here behind it (ns is the copy in its way, likely stale). Made active, ns would take
 * writes here under a name the other one uses elsewhere, and its changes, sent on, would be held
 * behind that one where it is (a collision there, whose way out reads "delete it": the real one).
 */
export async function heldBehindText(tx: Tx, ns: { id: string; name: string }): Promise<string | undefined> {
  const [behind] = await tx.select({ id: held.namespaceId, source: held.sourceCluster }).from(held).where(eq(held.localNamespaceId, ns.id)).orderBy(asc(held.heldAt)).limit(1);
  if (!behind) return undefined;
  return `namespace ${ns.name} here (id ${ns.id}) is not the namespace ${ns.name} (id ${behind.id}) that ${behind.source} replicates, whose changes are held here behind this copy ` +
    `(replication status): made active, this copy would take writes under a name that one uses. If this copy is stale (deleted on its active cluster), ` +
    `delete it here ('tern operator namespace delete ${ns.name}'): the held changes then apply, and ${ns.name} may be failed over`;
}

/** What is held, per source and namespace id, for replication status. */
export async function heldSummary(db: Db): Promise<Omit<HeldNamespace, "$typeName">[]> {
  const rows = await db
    .select({
      source: held.sourceCluster,
      id: held.namespaceId,
      name: min(held.namespaceName),
      localId: min(held.localNamespaceId),
      first: min(held.taskId),
      tasks: count(),
      since: min(held.heldAt),
    })
    .from(held)
    .groupBy(held.sourceCluster, held.namespaceId)
    .orderBy(asc(min(held.heldAt)));
  return rows.map((r) => ({
    sourceCluster: r.source,
    namespace: r.name ?? "",
    namespaceId: r.id,
    localNamespaceId: r.localId ?? "",
    firstTaskId: BigInt(r.first ?? 0),
    tasks: r.tasks,
    heldSince: r.since ? timestampFromDate(r.since) : undefined,
  }));
}
