import type { ClusterDirectory } from "../src/cluster/directory";
import type { RemoteClientPool } from "../src/cluster/remote-client";
import { failedPrecondition } from "../src/errors";
import type { NamespaceRegistry } from "../src/namespace/registry";
import { neverPulls, seenBy } from "./failover-target";

export interface ForcedFailoverCheckDeps {
  namespaces: NamespaceRegistry;
  clusters: ClusterDirectory;
  clients: RemoteClientPool;
  /** Longest wait for the target's answer; past it the failover goes on. */
  timeoutMs?: number;
}

/**
 * Refuses a forced failover asked here that its target would never hear of. A cluster hears a
 * namespace change from the cluster that made it (one the change makes active passes it on to its
 * own peers), so a failover made here reaches target only if target pulls from here. In a mesh
 * with the link between the two missing, it reached the others and not target: they named target
 * active, target another, and no cluster took the namespace's writes. Made on target, or on a
 * cluster target pulls from, it reaches every cluster. A target that does not answer (down), or
 * whose side of the connection is disabled (paused), hears it once back: no reason.
 */
export function createForcedFailoverCheck({ namespaces, clusters, clients, timeoutMs = 2_000 }: ForcedFailoverCheckDeps) {
  const current = clusters.current();
  const here = current.clusterName;

  /** Why target would never hear of a change made here, or undefined. */
  async function unheard(target: string): Promise<string | undefined> {
    const row = (await clusters.list()).find((c) => c.clusterName === target && !c.isCurrent);
    if (!row) return `cluster ${target} is not connected to ${here}`;
    return neverPulls(current, target, await seenBy(clients, row.rpcAddress, here, timeoutMs));
  }

  /** For an update of namespace naming target active (members: the clusters it sets, if any): FAILED_PRECONDITION if it is a forced failover target would never hear of. */
  return async function checkForcedFailover(namespace: string, target: string, members: string[]): Promise<void> {
    if (!target || target === here) return;
    const ns = await namespaces.describe({ name: namespace });
    // Not a failover, or not one the registry takes: its own answer says why.
    if (!ns.isGlobal || ns.activeClusterName === target || !(members.length ? members : ns.clusters).includes(target)) return;
    const why = await unheard(target);
    if (!why) return;
    throw failedPrecondition(
      `forced failover of namespace ${namespace} to ${target} refused: ${why}, so ${target} would never hear of a failover made on ${here} ` +
        `(the others would name it active, it another, and none would take the namespace's writes): make it on ${target}, or on a cluster ${target} pulls from, ` +
        `or connect ${here} and ${target} both ways first; ${namespace} stays active in ${ns.activeClusterName}`,
    );
  };
}

export type ForcedFailoverCheck = ReturnType<typeof createForcedFailoverCheck>;
