import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { NamespaceReplicationTask } from "../src/gen/tern/admin/v1/service_pb";
import type { NamespaceDescription } from "../src/gen/tern/workflow/v1/namespace_pb";
import type { NamespaceRecord, NamespaceRegistry } from "../src/namespace/registry";
import type { Metrics } from "../src/observability/metrics";
import type { Logger } from "../src/observability/log";
import { holdKnown } from "../src/cluster/directory";
import { transaction } from "../src/persistence/call-signal";
import type { Db, Tx } from "../src/persistence/database";
import type { RemoteCluster, ReplicationStream } from "./manager";
import { startJoinBackfill, stopBackfillJobs, stopBackfillsOfNonMembers } from "./backfill-jobs";
import { createInboundHeard, type Heard } from "./inbound-heard";
import { applyNamespaceTask, type AppliedNamespace } from "./namespace-applier";
import { liveCopyWayOut } from "./held-way-out";
import { dropHeld, firstHeld, heldNamespaceIds, holdTask, lockHeld, releaseHeld } from "./namespace-held";
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
  /** Awaited before each task is applied, with the namespace it carries and the stream's stop (tests: holds this cluster's view of a namespace change). */
  beforeApply?: (ns: NamespaceDescription, signal: AbortSignal) => Promise<void>;
  /** How long the sender may hold one poll open. */
  waitTimeoutMs?: number;
  /** How often held tasks are tried again without a namespace delete here to free a name (default 60 s): a delete by another build or behind the server's back. */
  heldRetryMs?: number;
  /** How long polls may fail before what was last heard is stale: history replication's (receiver.ts heard). */
  staleAfterMs?: number;
  now?: () => Date;
}

/**
 * Pulls a remote's namespace replication queue (served by replication/namespace-sender.ts)
 * from the persisted inbound ack and applies each task with its ack in one transaction,
 * so a restart of either side resumes with no gap and no duplicate.
 */
export function createNamespaceReceiver(deps: NamespaceReceiverDeps): ReplicationStream & { heard(remote: string): Heard; retryHeld(signal?: AbortSignal): Promise<void> } {
  const { db, currentCluster, log, waitTimeoutMs = 20_000, heldRetryMs = 60_000, now = () => new Date() } = deps;
  /** When the polls next try the held tasks again (0: at the next); a delete here tries them at once. */
  let heldRetryDue = 0;
  /** When each remote last answered a poll, and why its polls fail since: the ns row's max task id is as of then. */
  const inboundHeard = createInboundHeard({ everyMs: waitTimeoutMs, staleAfterMs: deps.staleAfterMs });

  /** Applies task in tx, with what the change starts or stops here; a collided task is left to the caller. */
  async function applyInTx(tx: Tx, from: string, task: NamespaceReplicationTask): Promise<AppliedNamespace> {
    const r = await applyNamespaceTask(tx, currentCluster, task.namespace!, now(), task.joinsAskingCluster, from);
    // A switch to this cluster refused: what it holds queued, so the switch's issuer (and any member that took it) hears the refusal.
    if (r.outcome === "refused" && task.namespace!.replicationConfig?.activeClusterName === currentCluster) await appendNamespaceTask(tx, r.record!, r.record!.clusters);
    if (r.outcome === "collided" || r.outcome === "skipped" || r.outcome === "refused") return r;
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
    return r;
  }

  /** After the commit of an applied task: the registry, the hooks and the log. */
  function applied(remote: string, task: NamespaceReplicationTask, result: AppliedNamespace): void {
    if (result.outcome === "refused") {
      log.warn("graceful failover's switch refused: this cluster holds the namespace above the failover version it was made from (a failover made elsewhere reached it first)", {
        remote, namespace: result.record?.name, failoverVersion: result.record?.failoverVersion, switchVersion: Number(task.namespace!.failoverVersion), taskId: Number(task.taskId),
      });
      deps.onQueued?.();
    }
    if (result.outcome === "skipped" || result.outcome === "collided" || result.outcome === "refused") return;
    deps.namespaces.invalidate(result.record);
    log.info("namespace replicated", { remote, namespace: result.record?.name, outcome: result.outcome, taskId: Number(task.taskId) });
    deps.onChanged?.(result.record!);
    if (result.activated) {
      deps.onQueued?.();
      deps.onActivated?.(result.record!);
    }
    if (result.joined) deps.onBackfillStarted?.();
  }

  /** Applies task with its ack; the stop (signal) rolls it back, cancelling a statement waiting for a lock, and the next start takes it again. */
  async function apply(key: AckKey, task: NamespaceReplicationTask, maxTaskId: number, signal: AbortSignal): Promise<void> {
    await deps.beforeApply?.(task.namespace!, signal);
    const info = task.namespace?.namespaceInfo;
    let dropped = 0;
    const result = await transaction(db, async (tx) => {
      await holdSourceAndListed(tx, key.remote, task);
      // Taken out of its clusters: what was held of it is moot (skipped as any non-member's change).
      dropped = info?.id && !task.namespace!.replicationConfig?.clusters.includes(currentCluster) ? await dropHeld(tx, info.id, task.namespace!.configVersion) : 0;
      // Behind a held task of its namespace: held too, never applied before it.
      const first = info?.id ? await firstHeld(tx, key.remote, info.id) : undefined;
      const r = first ? { outcome: "held" as const, collidesWith: first.localNamespaceId } : await applyInTx(tx, key.remote, task);
      if (r.outcome === "held" || r.outcome === "collided") await holdTask(tx, key.remote, task, r.collidesWith!);
      await advanceAckLevel(tx, key, Number(task.taskId), maxTaskId, task.createTime ? timestampDate(task.createTime) : undefined);
      return r;
    }, signal);
    if (dropped) {
      log.info(`held namespace replication tasks dropped: cluster ${currentCluster} was taken out of namespace ${info!.name}`, { remote: key.remote, namespaceId: info!.id, tasks: dropped, taskId: Number(task.taskId) });
    }
    if (result.outcome === "held") {
      log.info("namespace replication task held behind an earlier one of its namespace", { remote: key.remote, namespace: info!.name, namespaceId: info!.id, taskId: Number(task.taskId) });
    } else if (result.outcome === "collided") {
      log.warn(collisionText(currentCluster, key.remote, info!.name, info!.id, result.collidesWith!), { remote: key.remote, taskId: Number(task.taskId) });
    } else applied(key.remote, task, result);
  }

  /**
   * Orders an apply (or hold) against a remove here of its source or of a cluster its namespace
   * lists (remote-clusters.ts): a remove under way is waited for, and one after it sees what it
   * wrote and is refused; a task from a source removed meanwhile is not taken.
   */
  async function holdSourceAndListed(tx: Tx, source: string, task: NamespaceReplicationTask): Promise<void> {
    const listed = task.namespace?.replicationConfig?.clusters ?? [];
    const known = await holdKnown(tx, [...new Set([source, ...listed])].filter((n) => n !== currentCluster));
    if (!known.includes(source)) throw new Error(`cluster ${source} was removed here: its namespace replication task ${task.taskId} is not applied`);
  }

  /**
   * Applies the held tasks of each namespace, in order, up to the first that still collides; each
   * namespace's in one transaction with their release. Run after a namespace delete here (the copy
   * in the way may be gone: only a delete frees a name), at each stream's start, and every
   * heldRetryMs; after a failure at the next poll. Not at every poll: a query or more each, for nothing.
   */
  async function retryHeld(signal?: AbortSignal): Promise<void> {
    heldRetryDue = Date.now() + heldRetryMs;
    try {
      await retryEachHeld(signal);
    } catch (e) {
      heldRetryDue = 0;
      throw e;
    }
  }

  async function retryEachHeld(signal?: AbortSignal): Promise<void> {
    for (const namespaceId of await heldNamespaceIds(db)) {
      const done = await transaction(db, async (tx) => {
        const out: { source: string; task: NamespaceReplicationTask; result: AppliedNamespace }[] = [];
        for (const { source, task } of await lockHeld(tx, namespaceId)) {
          const result = await applyInTx(tx, source, task);
          if (result.outcome === "collided") break;
          await releaseHeld(tx, source, task.taskId);
          out.push({ source, task, result });
        }
        return out;
      }, signal);
      for (const { source, task, result } of done) applied(source, task, result);
      if (done.length) log.info("held namespace replication tasks applied", { namespaceId, tasks: done.length });
    }
  }

  async function run(remote: RemoteCluster, signal: AbortSignal, report: { ok(): void }): Promise<void> {
    const key: AckKey = { remote: remote.name, direction: "inbound", queue: "namespace", shardId: 0 };
    let ack = await readAckLevel(db, key);
    await retryHeld(signal);
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
      if (Date.now() >= heldRetryDue) await retryHeld(signal);
    }
  }

  return { name: "namespace", run, heard: inboundHeard.of, retryHeld };
}

/** What the log says of a held create, with what the operator does about it. */
export function collisionText(currentCluster: string, source: string, name: string, id: string, localId: string): string {
  return `namespace replication task held: namespace ${name} (id ${id}) from ${source} is not created here, a namespace ${name} with another id (${localId}) is here; ` +
    `its later changes wait behind it, the other namespaces' go on. If ${localId} is a stale copy (deleted on its active cluster), delete it here ` +
    `('tern operator namespace delete ${name}'): the held changes then apply. ${liveCopyWayOut(currentCluster, source, name, id, localId)}`;
}
