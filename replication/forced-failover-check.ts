import { remoteOf, type ClusterDirectory } from "../src/cluster/directory";
import type { RemoteClientPool } from "../src/cluster/remote-client";
import { failedPrecondition } from "../src/errors";
import type { NamespaceRegistry } from "../src/namespace/registry";
import type { Db } from "../src/persistence/database";
import { backfillJobsOf, unfinishedBackfill } from "./backfill-jobs";
import { backfillJobsOn, neverPulls, seenBy } from "./failover-target";

export interface ForcedFailoverCheckDeps {
  db: Db;
  namespaces: NamespaceRegistry;
  clusters: ClusterDirectory;
  clients: RemoteClientPool;
  /** Longest wait for a remote target's answers; past it the failover goes on as if it had none. */
  timeoutMs?: number;
}

/**
 * A forced failover's checks (`namespace update --active-cluster`), before it is made:
 *
 * - Its target must hear of it. A cluster hears a namespace change from the cluster that made it
 *   (one the change makes active passes it on to its own peers), so a failover made here reaches
 *   target only if target pulls from here. In a mesh with the link between the two missing, it
 *   reached the others and not target: they named target active, target another, and no cluster
 *   took the namespace's writes. A target that does not answer (down), or whose side of the
 *   connection is disabled (paused), hears it once back: no reason.
 * - Its target must have finished backfilling the namespace: made active, it answered NOT_FOUND
 *   for the runs it had not brought and took a second start of their workflow ids (the graceful
 *   failover refuses it too: failover-target.ts). Refused unless allowed: a forced failover is the
 *   emergency path, and where the backfill's source is gone for good, the operator takes the loss.
 *   A target that does not answer is no reason.
 */
export function createForcedFailoverCheck({ db, namespaces, clusters, clients, timeoutMs = 2_000 }: ForcedFailoverCheckDeps) {
  const current = clusters.current();
  const here = current.clusterName;

  /** Why target, at address (none: not connected here), would never hear of a change made here, or undefined. */
  async function unheard(target: string, address: string | undefined, signal?: AbortSignal): Promise<string | undefined> {
    if (!address) return `cluster ${target} is not connected to ${here}`;
    return neverPulls(current, target, await seenBy(clients, address, here, timeoutMs, { signal }));
  }

  /**
   * For an update of namespace naming target active (members: the clusters it sets, if any):
   * FAILED_PRECONDITION if it is a forced failover target would never hear of, or, unless
   * allowUnfinishedBackfill, one to a target still backfilling the namespace. signal (the call's)
   * ends the asks of target: a client that cancelled or timed out leaves none running.
   */
  return async function checkForcedFailover(namespace: string, target: string, members: string[], allowUnfinishedBackfill = false, signal?: AbortSignal): Promise<void> {
    if (!target) return;
    const ns = await namespaces.describe({ name: namespace });
    // Not a failover, or not one the registry takes: its own answer says why.
    if (!ns.isGlobal || ns.activeClusterName === target || !(members.length ? members : ns.clusters).includes(target)) return;
    const address = target === here ? undefined : (await remoteOf(clusters, target))?.rpcAddress;
    const [why, jobs] = await Promise.all([
      target === here ? undefined : unheard(target, address, signal),
      allowUnfinishedBackfill ? [] : target === here ? backfillJobsOf(db, ns.id) : address ? backfillJobsOn(clients, address, namespace, timeoutMs, signal) : [],
    ]);
    // The asks' "no answer" then is no answer of target's: the call is over.
    signal?.throwIfAborted();
    if (why) {
      throw failedPrecondition(
        `forced failover of namespace ${namespace} to ${target} refused: ${why}, so ${target} would never hear of a failover made on ${here} ` +
          `(the others would name it active, it another, and none would take the namespace's writes): make it on ${target}, or on a cluster ${target} pulls from, ` +
          `or connect ${here} and ${target} both ways first; ${namespace} stays active in ${ns.activeClusterName}`,
      );
    }
    const problem = unfinishedBackfill(target, namespace, jobs, ns.clusters);
    if (!problem) return;
    throw failedPrecondition(
      `${problem}; wait for its backfill to be DONE, or, if its source is gone for good, force the failover with --allow-unfinished-backfill ` +
        `(allow_unfinished_backfill); namespace ${namespace} stays active in ${ns.activeClusterName}`,
    );
  };
}

export type ForcedFailoverCheck = ReturnType<typeof createForcedFailoverCheck>;
