import { and, eq } from "drizzle-orm";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import { loggableError } from "../src/errors";
import type { Writer } from "../src/history/writer";
import type { NamespaceRegistry } from "../src/namespace/registry";
import type { Logger } from "../src/observability/log";
import type { Db } from "../src/persistence/database";
import { executions, historyBranches, isUnsettledBranch, isZombie } from "../src/persistence/schema";
import type { HistoryApplier } from "./applier";
import { sleep } from "../src/sleep";

export interface ConflictSweepDeps {
  db: Db;
  cluster: CurrentCluster;
  namespaces: NamespaceRegistry;
  writer: Pick<Writer, "transact">;
  applier: Pick<HistoryApplier, "settle">;
  log: Logger;
  /** Pause before a failed sweep is tried again. */
  retryMs?: number;
}

/**
 * Settles conflicts on the cluster that becomes active for a namespace (conflict.ts): a
 * branch that lost while this cluster was passive had nobody to re-apply its signals and
 * cancel requests, and a ZOMBIE run nobody to terminate it. Swept when a namespace becomes
 * active here and at start; idempotent, so sweeping twice does no harm.
 */
export function createConflictSweep({ db, cluster, namespaces, writer, applier, log, retryMs = 1000 }: ConflictSweepDeps) {
  const stopping = new AbortController();
  let queue: Promise<void> = Promise.resolve();

  /**
   * The runs of a namespace (all namespaces when undefined) with kept branches whose requests
   * are not all on the current branch yet, or in ZOMBIE state: runs settled before are not
   * visited again at every activation.
   */
  async function runsToSettle(namespaceId?: string) {
    const { branched, zombies } = runsToSettleQueries(db, namespaceId);
    const rows = (await Promise.all([branched, zombies])).flat();
    const unique = new Map(rows.map((r) => [`${r.namespaceId}/${r.workflowId}/${r.runId}`, r]));
    return [...unique.values()];
  }

  async function sweep(namespaceId?: string): Promise<void> {
    for (let attempt = 1; !stopping.signal.aborted; attempt++) {
      try {
        let settled = 0;
        for (const key of await runsToSettle(namespaceId)) {
          if (stopping.signal.aborted) return;
          const ns = await namespaces.getById(key.namespaceId);
          if (!ns.isGlobal || ns.activeClusterName !== cluster.clusterName) continue;
          // The stop rolls it back, cancelling a statement waiting for a lock (the run's row, say): the next start sweeps again.
          await writer.transact("SettleConflicts", (tx) => applier.settle(tx, ns, key), stopping.signal);
          settled++;
        }
        if (settled) log.info("settled conflicts of runs with kept branches", { namespaceId, runs: settled });
        return;
      } catch (e) {
        if (stopping.signal.aborted) return;
        // A handover in progress or a failover meanwhile: the next activation sweeps again, but try a few more times.
        log.warn("settling conflicts failed; retrying", { namespaceId, attempt, error: loggableError(e) });
        if (attempt >= 10) return;
        await sleep(retryMs, stopping.signal);
      }
    }
  }

  return {
    /** Sweeps a namespace (every namespace when none is given) after the sweeps already asked for; settles when it is done. */
    trigger(namespaceId?: string): Promise<void> {
      queue = queue.then(() => sweep(namespaceId));
      return queue;
    },
    async stop(): Promise<void> {
      stopping.abort();
      await queue;
    },
  };
}

export type ConflictSweep = ReturnType<typeof createConflictSweep>;

/**
 * The sweep's two selects, unsent (their text is what the tests explain): each reads only its
 * partial index (executions_zombie, history_branches_unsettled), not every run and branch.
 */
export function runsToSettleQueries(db: Db, namespaceId?: string) {
  const b = historyBranches;
  const ofNamespace = (column: typeof b.namespaceId | typeof executions.namespaceId) => namespaceId ? eq(column, namespaceId) : undefined;
  return {
    branched: db.selectDistinct({ namespaceId: b.namespaceId, workflowId: b.workflowId, runId: b.runId })
      .from(b)
      .where(and(isUnsettledBranch(b), ofNamespace(b.namespaceId))),
    zombies: db.select({ namespaceId: executions.namespaceId, workflowId: executions.workflowId, runId: executions.runId })
      .from(executions)
      .where(and(isZombie(executions.status), ofNamespace(executions.namespaceId))),
  };
}
