import { eq } from "drizzle-orm";
import type { NamespaceRecord } from "../namespace/registry";
import type { Tx } from "../persistence/database";
import { namespaces } from "../persistence/schema";

/** Thrown inside a write transaction when the namespace moved on since the write read it; the write is retried. */
export class NamespaceChanged extends Error {
  override name = "NamespaceChanged";
}

/**
 * Share-locks a global namespace's row for the rest of the write's transaction and checks
 * the write still holds: active here, NORMAL, at the failover version it stamps. The lock
 * is the HANDOVER barrier: a graceful failover's switch to HANDOVER waits for every write
 * holding it, and every later write sees HANDOVER (across all processes on the database).
 */
export async function guardNamespace(tx: Tx, ns: NamespaceRecord, currentCluster: string): Promise<void> {
  if (!ns.isGlobal) return;
  const [row] = await tx
    .select({ state: namespaces.replicationState, version: namespaces.failoverVersion, active: namespaces.activeClusterName })
    .from(namespaces)
    .where(eq(namespaces.id, ns.id))
    .for("share");
  if (!row) throw new NamespaceChanged(`namespace ${ns.name} was deleted`);
  if (row.state !== "NORMAL" || row.version !== ns.failoverVersion || row.active !== currentCluster) {
    throw new NamespaceChanged(`namespace ${ns.name} is now ${row.state} at version ${row.version} in ${row.active}`);
  }
}
