import { eq } from "drizzle-orm";
import { failedPrecondition } from "../errors";
import { lockNamespaceForChange } from "../history/namespace-guard";
import { transaction } from "../persistence/call-signal";
import type { Db } from "../persistence/database";
import { backfillJobs, executions, historyBranchEvents, historyBranches, historyEvents, namespaces, replicationDlq, replicationTasks, requestIds, timerTasks } from "../persistence/schema";
import type { ActiveHolds } from "../../replication/stale-copy";
import type { NamespaceRecord, NamespaceRegistry } from "./registry";

export interface DeleteNamespaceOptions {
  signal?: AbortSignal;
  /** Whether the active cluster a passive copy here names still holds its id (replication/stale-copy.ts). */
  activeHolds: (ns: NamespaceRecord) => Promise<ActiveHolds>;
}

/**
 * Deletes a namespace with every execution, event, task, DLQ entry and backfill job it holds, in one transaction, on
 * this cluster only, after the writes in flight to it. A global namespace that lists this
 * cluster is deleted on its active cluster only: a passive member would go on receiving its
 * replication tasks, and apply none of them, nor any task behind them in their shards. Except a
 * stale copy, one its active cluster says it no longer holds: deleted there and registered again, the
 * new one's create is held here until this copy is gone (replication/namespace-held.ts).
 */
export async function deleteNamespace(db: Db, registry: NamespaceRegistry, name: string, here: string, options: DeleteNamespaceOptions): Promise<{ executions: number; unasked: string[] }> {
  const { signal } = options;
  const ns = await registry.describe({ name });
  let unasked: string[] = [];
  if (ns.isGlobal && ns.clusters.includes(here) && ns.activeClusterName !== here) {
    const holds = await options.activeHolds(ns);
    if (holds === "holds" || !("gone" in holds)) throw failedPrecondition(passiveDeleteRefused(ns, here, holds));
    unasked = holds.gone;
  }
  // signal: the call's; once it fired, the delete does not commit (persistence/call-signal.ts).
  const deleted = await transaction(db, async (tx) => {
    // The barrier waits for the writes that hold it (guardNamespace) to commit, so their rows
    // are deleted here; a write after it finds no namespace and writes nothing.
    if (!(await lockNamespaceForChange(tx, ns.id))) return 0; // deleted meanwhile, with its runs
    const runs = await tx.delete(executions).where(eq(executions.namespaceId, ns.id)).returning({ runId: executions.runId });
    await tx.delete(historyEvents).where(eq(historyEvents.namespaceId, ns.id));
    await tx.delete(historyBranchEvents).where(eq(historyBranchEvents.namespaceId, ns.id));
    await tx.delete(historyBranches).where(eq(historyBranches.namespaceId, ns.id));
    await tx.delete(requestIds).where(eq(requestIds.namespaceId, ns.id));
    await tx.delete(timerTasks).where(eq(timerTasks.namespaceId, ns.id));
    await tx.delete(replicationTasks).where(eq(replicationTasks.namespaceId, ns.id));
    // Left, a namespace of the same id (replication creates it again where it joins again) showed them as its own.
    await tx.delete(backfillJobs).where(eq(backfillJobs.namespaceId, ns.id));
    // Left, they held the runs of a namespace created again of the same id, and `dlq list | merge` showed them
    // (a merge: "not known yet; retrying"). A merge applying one holds the barrier (dlq-merge.ts): ordered with this.
    await tx.delete(replicationDlq).where(eq(replicationDlq.namespaceId, ns.id));
    await tx.delete(namespaces).where(eq(namespaces.id, ns.id));
    return runs.length;
  }, signal);
  registry.invalidate(ns);
  return { executions: deleted, unasked };
}

/** Why a passive member does not delete its copy, and what to do instead. */
function passiveDeleteRefused(ns: NamespaceRecord, here: string, holds: Exclude<ActiveHolds, { gone: string[] }>): string {
  const active = ns.activeClusterName;
  const instead = `delete it on ${active}, or take ${here} out of its clusters there first`;
  if (holds === "holds") return `namespace ${ns.name} is global and active in cluster ${active}, which still holds it (id ${ns.id}), and ${here} is one of its clusters: ${instead}`;
  if ("behind" in holds) {
    return `namespace ${ns.name} is global, ${here} is one of its clusters, and ${active}, named active here, no longer holds it, but ${holds.behind}; ` +
      `wait until ${here} hears of that failover, then delete it where it is active, or take ${here} out of its clusters there first`;
  }
  if ("unasked" in holds) {
    const who = holds.unasked.map((u) => `cluster ${u.cluster} at ${u.address} (${u.why})`).join(", ");
    const address = holds.unasked.length === 1 ? holds.unasked[0]!.address : "ADDRESS";
    return `namespace ${ns.name} is global, ${here} is one of its clusters, and ${active}, named active here, no longer holds it, but ${who} could not be asked ` +
      `whether it holds it at a later failover version (this copy then behind, not stale: deleted, it would be lost); delete it again once it answers, ` +
      `or, if it is gone for good, disable the connection to it here ('tern operator cluster upsert --frontend-address ${address} --enable-connection=false'): ` +
      `a member whose connection is disabled is not waited for`;
  }
  return `namespace ${ns.name} is global and active in cluster ${active}, and ${here} is one of its clusters: ${instead} ` +
    `(a copy ${active} no longer holds may be deleted here, but ${active} could not be asked: ${holds.unknown})`;
}
