import type { ServiceImpl } from "@connectrpc/connect";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { BackfillService } from "../gen/tern/admin/v1/backfill_pb";
import type { NamespaceRegistry } from "../namespace/registry";
import { transaction } from "../persistence/call-signal";
import type { Db } from "../persistence/database";
import { backfillJobsOf, startBackfillJobAsked, type BackfillJob } from "../../replication/backfill-jobs";
import type { ClusterDirectory } from "../cluster/directory";
import { failedPrecondition, invalidArgument } from "../errors";
import { listExecutionsForReplication } from "../../replication/backfill-sender";
import { shown } from "../shown";

export interface BackfillHandlerDeps {
  db: Db;
  namespaces: NamespaceRegistry;
  clusters: ClusterDirectory;
  now: () => Date;
  /** Tells the backfill streams a job was started. */
  wake: () => void;
}

type Remotes = Awaited<ReturnType<ClusterDirectory["list"]>>;

/**
 * Why a RUNNING job does not move, which its status said nothing of (RUNNING, its count
 * standing still, no error): its source is not connected here, or the connection is disabled.
 */
function pausedBy(job: BackfillJob, remotes: Remotes): string | undefined {
  if (job.status !== "RUNNING") return undefined;
  const remote = remotes.find((c) => c.clusterName === job.sourceCluster && !c.isCurrent);
  if (!remote) return `paused: cluster ${job.sourceCluster} is not connected to this cluster (add it with cluster upsert)`;
  if (!remote.enableConnection) return `paused: the connection to cluster ${job.sourceCluster} is disabled here (it goes on once enabled)`;
  return undefined;
}

/** A job as GetBackfillStatus (and StartBackfill's replaced) shows it: LAST ERROR says why it waits, if it does. */
function shownJob(j: BackfillJob, remotes: Remotes) {
  return {
    sourceCluster: j.sourceCluster,
    status: j.status,
    done: BigInt(j.done),
    total: BigInt(j.total),
    lastError: [pausedBy(j, remotes), j.retryError && `retrying: ${j.retryError}`, j.lastError].filter(Boolean).join("; "),
    startedTime: timestampFromDate(j.startedAt),
    updatedTime: timestampFromDate(j.updatedAt),
  };
}

/** The refusal of a start of a RUNNING job: how far it is, that it goes on by itself, and how to start it again anyway. */
function stillRunning(namespace: string, j: BackfillJob, remotes: Remotes) {
  const { lastError } = shownJob(j, remotes);
  return failedPrecondition(
    `the backfill of namespace ${namespace} from ${j.sourceCluster} is RUNNING here already (${j.done}/${j.total} runs, started ${j.startedAt.toISOString()}` +
      `${lastError ? `; ${lastError}` : ""}): it goes on by itself (see backfill-status); to start it again from the beginning, its progress lost, give --restart (restart)`,
  );
}

/** BackfillService: the source's run listing and the receiver's job status; logic in replication/backfill-*. */
export function createBackfillHandler({ db, namespaces, clusters, now, wake }: BackfillHandlerDeps): ServiceImpl<typeof BackfillService> {
  return {
    listExecutionsForReplication: (r) => listExecutionsForReplication(db, r),
    async startBackfill(r, { signal }) {
      const ns = await namespaces.describe({ name: r.namespace });
      const here = clusters.current().clusterName;
      const source = r.sourceCluster || ns.activeClusterName;
      if (!ns.isGlobal) throw failedPrecondition(`namespace ${ns.name} is not global: there is nothing to backfill from another cluster`);
      if (source === here) throw invalidArgument(`cluster ${here} cannot backfill namespace ${ns.name} from itself; name the source with --from`);
      for (const c of [here, source]) {
        if (!ns.clusters.includes(c)) throw failedPrecondition(`namespace ${ns.name} does not list cluster ${shown(c)} (its clusters: ${ns.clusters.join(", ")})`);
      }
      const remotes = await clusters.list();
      if (!remotes.some((c) => c.clusterName === source && !c.isCurrent)) throw failedPrecondition(`cluster ${shown(source)} is not connected to ${here}; add it with cluster upsert first`);
      const k = { namespaceId: ns.id, sourceCluster: source };
      const { replaced, running } = await transaction(db, (tx) => startBackfillJobAsked(tx, k, now(), r.restart), signal);
      if (running) throw stillRunning(ns.name, running, remotes);
      wake();
      return { namespace: ns.name, sourceCluster: source, replaced: replaced && shownJob(replaced, remotes) };
    },
    async getBackfillStatus(r) {
      const ns = await namespaces.describe({ name: r.namespace });
      // Answered with no jobs, the CLI said every execution of it had come by replication.
      if (!ns.isGlobal) throw failedPrecondition(`namespace ${ns.name} is local: it is not replicated, so nothing is backfilled into it (make it global with namespace update --promote-global)`);
      const [jobs, remotes] = await Promise.all([backfillJobsOf(db, ns.id), clusters.list()]);
      return {
        namespace: ns.name,
        namespaceId: ns.id,
        jobs: jobs.map((j) => shownJob(j, remotes)),
      };
    },
  };
}
