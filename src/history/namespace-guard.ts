import { eq, sql } from "drizzle-orm";
import type { NamespaceRecord } from "../namespace/registry";
import type { Tx } from "../persistence/database";
import { runGuard, runStatement, tableCodec, type DriverRow, type StatementPart } from "../persistence/raw-statements";
import { namespaces } from "../persistence/schema";

/** Thrown inside a write transaction when the namespace moved on since the write read it; the write is retried. */
export class NamespaceChanged extends Error {
  override name = "NamespaceChanged";
}

/** The advisory lock key of a namespace's HANDOVER barrier (also in migration 0005's function). */
const HANDOVER_LOCK_SEED = 7233;
export const handoverLockKey = (namespaceId: string) => sql`hashtextextended(${namespaceId}, ${sql.raw(String(HANDOVER_LOCK_SEED))})`;

/**
 * Takes a namespace's barrier lock, shared, for the rest of the write's transaction and
 * checks the write still holds: the namespace still there, active here, NORMAL, at the
 * failover version it stamps. A graceful failover's switch to HANDOVER, and a delete, take
 * the lock exclusively, so they wait for every write holding it and every later write sees
 * HANDOVER, or no namespace (across all processes on the database). A local namespace too:
 * else a write that read it before its delete commits its rows after the delete's, rows of
 * no namespace. An advisory lock, not a row share lock: its queue is first come, first
 * served, so a steady stream of writes cannot starve the switch.
 */
export async function guardNamespace(tx: Tx, ns: NamespaceRecord, currentCluster: string): Promise<void> {
  const row = await readNamespaceUnderBarrier(tx, ns);
  if (!row) throw new NamespaceChanged(`namespace ${ns.name} was deleted`);
  if (row.replicationState !== "NORMAL" || row.failoverVersion !== ns.failoverVersion || row.activeClusterName !== currentCluster) {
    throw new NamespaceChanged(`namespace ${ns.name} is now ${row.replicationState} at version ${row.failoverVersion} in ${row.activeClusterName}`);
  }
}

/**
 * The namespace as it stands now, read under its barrier lock (shared): a change of its
 * active cluster takes the lock exclusively, so it is ordered wholly before or after the
 * caller's transaction. Undefined if it was deleted.
 */
export async function readNamespaceUnderBarrier(tx: Tx, ns: NamespaceRecord): Promise<NamespaceRecord | undefined> {
  const row = await rowUnderBarrier(tx, ns.id);
  return row && {
    ...ns,
    replicationState: row.replication_state as NamespaceRecord["replicationState"],
    failoverVersion: Number(row.failover_version),
    activeClusterName: row.active_cluster_name as string,
  };
}

/**
 * Whether a namespace is still here, read under its barrier lock (shared) as readNamespaceUnderBarrier
 * reads it: a delete is ordered wholly before the caller's transaction (false) or after it.
 */
export async function namespaceHereUnderBarrier(tx: Tx, namespaceId: string): Promise<boolean> {
  return (await rowUnderBarrier(tx, namespaceId)) !== undefined;
}

async function rowUnderBarrier(tx: Tx, namespaceId: string): Promise<DriverRow | undefined> {
  // Two statements, pipelined: the read's snapshot must be taken after the lock is granted.
  const [, [row]] = await Promise.all([runStatement(tx, LOCK_SHARED_TEXT, [namespaceId]), runStatement(tx, READ_TEXT, [namespaceId])]);
  return row;
}

const n = tableCodec(namespaces);
const LOCK_SHARED_TEXT = `select pg_advisory_xact_lock_shared(hashtextextended($1, ${HANDOVER_LOCK_SEED}))`;
const READ_TEXT =
  `select ${n.name("replicationState")} as replication_state, ${n.name("failoverVersion")} as failover_version, ` +
  `${n.name("activeClusterName")} as active_cluster_name from ${n.table} where ${n.name("id")} = $1`;

/**
 * guardNamespace as a part of a write's one statement (composite), for a write sent in one
 * round trip; it must be the statement's first part. Its column calls
 * tern_namespace_still_writable (migration 0005), which takes the barrier lock shared for the
 * rest of the transaction and then checks, in a query of its own whose snapshot is taken after
 * the lock is granted, that the namespace is still NORMAL, at ns's failover version and active
 * in currentCluster; else it fails the statement (a guard, see DIVISION_BY_ZERO), so the write
 * rolls back. PostgreSQL computes a statement's columns in order and runs its writing
 * expressions after them, so the lock is taken before any row lock of the write, as
 * guardNamespace's is.
 */
export function stillWritablePart(ns: NamespaceRecord, currentCluster: string): StatementPart {
  return { ctes: [], columns: [["writable", STILL_WRITABLE]], params: [ns.id, ns.failoverVersion, currentCluster] };
}

// The function's lock key is handoverLockKey's: hashtextextended(id, HANDOVER_LOCK_SEED).
const STILL_WRITABLE = "tern_namespace_still_writable($1, $2, $3)";

/**
 * For a passive apply (replication's receiver): takes the barrier locks of namespaces, shared, for
 * the rest of its transaction, then checks they are all still there, failing with gone() if not. A
 * delete takes the lock exclusively (namespace/delete.ts), so it is ordered wholly before the apply
 * (which then writes nothing) or after it (and takes the runs it wrote). Two statements issued at
 * once, so no round trip of their own: the check's snapshot is taken once the locks are granted.
 * In id order: a shared lock waits behind an exclusive one queued before it.
 */
export function holdNamespaces(tx: Tx, ids: Iterable<string>, gone: () => Error): Promise<unknown> {
  const all = JSON.stringify([...new Set(ids)].sort());
  return Promise.all([runStatement(tx, LOCK_ALL_SHARED_TEXT, [all]), runGuard(tx, ALL_PRESENT_TEXT, [all], gone)]);
}

const LOCK_ALL_SHARED_TEXT = `select pg_advisory_xact_lock_shared(hashtextextended(value, ${HANDOVER_LOCK_SEED})) from jsonb_array_elements_text($1::jsonb)`;
const ALL_PRESENT_TEXT = `select 1 / (count(*) = jsonb_array_length($1::jsonb))::int as present from ${n.table} where ${n.name("id")} in (select jsonb_array_elements_text($1::jsonb))`;

/** Takes a namespace's barrier lock exclusively: for changes of its active cluster and its delete (see readNamespaceUnderBarrier). */
export async function lockNamespaceBarrier(tx: Tx, namespaceId: string): Promise<void> {
  await tx.execute(sql`select pg_advisory_xact_lock(${handoverLockKey(namespaceId)})`);
}

/**
 * Locks a namespace's row, then its barrier exclusively (lockNamespaceBarrier), in the order a
 * namespace update takes them (registry.ts): taken the other way round, the two deadlocked.
 * False, taking no barrier, when the namespace is gone.
 */
export async function lockNamespaceForChange(tx: Tx, namespaceId: string): Promise<boolean> {
  const [row] = await tx.select({ id: namespaces.id }).from(namespaces).where(eq(namespaces.id, namespaceId)).for("update");
  if (!row) return false;
  await lockNamespaceBarrier(tx, namespaceId);
  return true;
}
