import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { NamespaceReplicationTask } from "../src/gen/tern/admin/v1/service_pb";
import type { NamespaceDescription } from "../src/gen/tern/workflow/v1/namespace_pb";
import type { NamespaceRecord, NamespaceRegistry } from "../src/namespace/registry";
import type { Metrics } from "../src/observability/metrics";
import type { Logger } from "../src/observability/log";
import { transaction } from "../src/persistence/call-signal";
import type { Db } from "../src/persistence/database";
import type { RemoteCluster, ReplicationStream } from "./manager";
import { startJoinBackfill, stopBackfillJobs, stopBackfillsOfNonMembers } from "./backfill-jobs";
import { createInboundHeard, type Heard } from "./inbound-heard";
import { applyNamespaceTask } from "./namespace-applier";
import { advanceAckLevel, appendNamespaceTask, readAckLevel, type AckKey } from "./namespace-queue";

export interface NamespaceReceiverDeps {
  db: Db;
  currentCluster: string;
  namespaces: NamespaceRegistry;
  log: Logger;
  metrics?: Metrics;
  /** A replicated change made this cluster active for ns (timers due there must fire now). */
  onActivated?: (ns: NamespaceRecord) => void;
  /** A replicated change was saved here (an activation too). */
  onChanged?: (ns: NamespaceRecord) => void;
  /** A backfill job was committed (wakes the backfill streams). */
  onBackfillStarted?: () => void;
  /** A namespace task was committed to this cluster's own queue (wakes the namespace sender). */
  onQueued?: () => void;
  /** Awaited before each task is applied, with the namespace it carries (tests: holds this cluster's view of a namespace change). */
  beforeApply?: (ns: NamespaceDescription) => Promise<void>;
  /** How long the sender may hold one poll open. */
  waitTimeoutMs?: number;
  /** How long polls may fail before what was last heard is stale: history replication's (receiver.ts heard). */
  staleAfterMs?: number;
  now?: () => Date;
}

/**
 * Pulls a remote's namespace replication queue (served by replication/namespace-sender.ts)
 * from the persisted inbound ack and applies each task with its ack in one transaction,
 * so a restart of either side resumes with no gap and no duplicate.
 */
export function createNamespaceReceiver(deps: NamespaceReceiverDeps): ReplicationStream & { heard(remote: string): Heard } {
  const { db, currentCluster, log, waitTimeoutMs = 20_000, now = () => new Date() } = deps;
  /** When each remote last answered a poll, and why its polls fail since: the ns row's max task id is as of then. */
  const inboundHeard = createInboundHeard({ everyMs: waitTimeoutMs, staleAfterMs: deps.staleAfterMs });

  /** Applies task with its ack; the stop (signal) rolls it back, cancelling a statement waiting for a lock, and the next start takes it again. */
  async function apply(key: AckKey, task: NamespaceReplicationTask, maxTaskId: number, signal: AbortSignal): Promise<void> {
    await deps.beforeApply?.(task.namespace!);
    const result = await transaction(db, async (tx) => {
      const r = await applyNamespaceTask(tx, currentCluster, task.namespace!, now(), task.joinsAskingCluster);
      const source = r.record?.activeClusterName;
      // Executions from before this cluster joined: backfilled from the active cluster, recorded with the join.
      if (r.joined && source && source !== currentCluster) await startJoinBackfill(tx, r.record!.id, source, now());
      if (r.left) {
        const why = `stopped: cluster ${currentCluster} was taken out of namespace ${r.record!.name} (its clusters now: ${r.record!.clusters.join(", ")}); added back, it backfills it again`;
        await stopBackfillJobs(tx, { namespaceId: r.record!.id }, why, now());
      } else if (r.outcome === "updated") await stopBackfillsOfNonMembers(tx, r.record!, now());
      // Made active here by another cluster's change: queued here too, as it stands, so that a member
      // that hears this cluster and not that one (cut off from it, or it gone since) learns it.
      if (r.activated) await appendNamespaceTask(tx, r.record!, r.record!.clusters);
      await advanceAckLevel(tx, key, Number(task.taskId), maxTaskId, task.createTime ? timestampDate(task.createTime) : undefined);
      return r;
    }, signal);
    if (result.outcome === "skipped") return;
    deps.namespaces.invalidate(result.record);
    log.info("namespace replicated", { remote: key.remote, namespace: result.record?.name, outcome: result.outcome, taskId: Number(task.taskId) });
    deps.onChanged?.(result.record!);
    if (result.activated) {
      deps.onQueued?.();
      deps.onActivated?.(result.record!);
    }
    if (result.joined) deps.onBackfillStarted?.();
  }

  async function run(remote: RemoteCluster, signal: AbortSignal, report: { ok(): void }): Promise<void> {
    const key: AckKey = { remote: remote.name, direction: "inbound", queue: "namespace", shardId: 0 };
    let ack = await readAckLevel(db, key);
    // The first pull answers at once, so a (re)connection shows as connected without waiting out a long poll.
    let wait = 0;
    while (!signal.aborted) {
      const timeoutMs = waitTimeoutMs + 10_000;
      const res = await remote.clients.admin.getNamespaceReplicationTasks(
        { afterTaskId: BigInt(ack), clusterName: currentCluster, waitTimeoutMs: wait, pageSize: 100 },
        { signal, timeoutMs },
      ).catch((e) => {
        if (signal.aborted) throw e;
        // Connect's own words name no call and no cluster: "the operation timed out".
        const failure = ConnectError.from(e).code === Code.DeadlineExceeded
          ? new Error(`cluster ${remote.name} did not answer a namespace replication poll within ${timeoutMs} ms`)
          : e;
        inboundHeard.failed(remote.name, failure);
        throw failure;
      });
      inboundHeard.heard(remote.name);
      report.ok();
      wait = waitTimeoutMs;
      const max = Number(res.maxTaskId);
      for (const task of res.tasks) {
        if (Number(task.taskId) <= ack) continue; // already applied (a repeated page)
        await apply(key, task, max, signal);
        ack = Number(task.taskId);
      }
      // Tasks for namespaces not listing this cluster were skipped by the sender: move past them.
      const last = Number(res.lastTaskId);
      if (last > ack) {
        await transaction(db, (tx) => advanceAckLevel(tx, key, last, max), signal);
        ack = last;
      }
      deps.metrics?.set("namespace_replication_task_ack_level", { remote_cluster: remote.name }, ack);
    }
  }

  return { name: "namespace", run, heard: inboundHeard.of };
}
