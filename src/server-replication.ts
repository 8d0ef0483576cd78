import { createRemoteClientPool } from "./cluster/remote-client";
import { createRemoteClusters } from "./cluster/remote-clusters";
import { createHistoryApplier } from "../replication/applier";
import { createConflictSweep } from "../replication/conflict-sweep";
import { createReplicationDlq } from "../replication/dlq";
import { createBackfillReceiver } from "../replication/backfill-receiver";
import { createReplicationCleanup } from "../replication/cleanup";
import { createGracefulFailover } from "../replication/failover";
import { createHandoverReset } from "../replication/handover-reset";
import { createFailoverTargetCheck, createFailoverTargetRecheck, createTargetHolds } from "../replication/failover-target";
import { startBackfillsFrom, stopBackfillsFrom } from "../replication/backfill-jobs";
import { connectionStateSeries, createReplicationManager } from "../replication/manager";
import { createNamespaceReceiver } from "../replication/namespace-receiver";
import { createNamespaceQueueWatch } from "../replication/namespace-queue-watch";
import { createNamespaceSender, NAMESPACE_QUEUE_KEY } from "../replication/namespace-sender";
import { resendNamespacesTo } from "../replication/namespace-queue";
import { createFailoverMembersCheck } from "../replication/failover-members";
import { createHistoryReceiver } from "../replication/receiver";
import { createReplicationSender } from "../replication/sender";
import { createReplicationStatus } from "../replication/status";
import { createPeriodic } from "./periodic";
import { createRedirectionOutcomes } from "./frontend/redirection-outcomes";
import type { Metrics } from "./observability/metrics";
import type { Base, Core } from "./server-core";

/** Replication towards and from remote clusters (replication/). */
export function wireReplication({ opts, log, now, cluster, database }: Base, core: Core) {
  const { db, metrics, notifier, namespaces, writer, onActivated, activatedHooks } = core;
  const clients = createRemoteClientPool();
  // Workflow calls and failovers forwarded to the active cluster (server-routes.ts), counted and
  // logged alike, and what became of them lately shown by replication status.
  const redirections = createRedirectionOutcomes({ metrics, log });
  const baseApplier = createHistoryApplier({ cluster, namespaces, writer, log });
  const applier = opts.replication?.wrapApplier?.(baseApplier) ?? baseApplier;
  const dlq = createReplicationDlq({ db, metrics, log });
  /**
   * replication_dlq_size again: at the start, when remotes come and go (each remote shows, 0 without
   * entries), and after a namespace delete. Never rejects (refreshGauge): a read that fails is logged.
   */
  const readDlqGauge = () => dlq.refreshGauge({ readRemotes: true });
  const refreshDlqGauge = () => void readDlqGauge();
  const historyReceiver = createHistoryReceiver({ db, cluster, writer: core.applyWriter, notifier, metrics, log, applier, dlq, retry: opts.replication?.retry, reprobeMs: opts.replication?.reprobeMs, pageSize: opts.replication?.pageSize,
    waitMs: opts.replication?.waitMs, silenceGraceMs: opts.replication?.silenceGraceMs,
    durable: opts.replication?.durable ?? database.applies?.durable, now, onBackfillStarted: () => backfill.wake(),
  });
  // A source not heard from lately may have written tasks not seen here: no lag is claimed for it, as status says (status.ts).
  metrics.unknownWhile("replication_tasks_lag", (labels) => historyReceiver.heard(labels.remote_cluster!).stale);
  const backfill = createBackfillReceiver({ db, applier, namespaces, writer, notifier, log, now, historyPageBytes: opts.replication?.historyPageBytes, idleMs: opts.replication?.backfillIdleMs });
  const namespaceReceiver = createNamespaceReceiver({
    db, currentCluster: cluster.clusterName, namespaces, log, metrics, now, onActivated, onChanged: core.onChanged, onBackfillStarted: backfill.wake,
    onQueued: () => notifier.notify(NAMESPACE_QUEUE_KEY),
    beforeApply: opts.replication?.beforeNamespaceApply, staleAfterMs: historyReceiver.staleAfterMs, waitTimeoutMs: opts.replication?.waitMs,
    heldRetryMs: opts.replication?.heldRetryMs,
  });
  // Becoming active: settle the conflicts resolved while this cluster was passive.
  const sweep = createConflictSweep({ db, cluster, namespaces, writer, applier, log });
  activatedHooks.add((ns) => sweep.trigger(ns.id));
  const manager = createReplicationManager({
    db, clients, log,
    streamsFor: (remote) => [namespaceReceiver, ...historyReceiver.streamsFor(remote), backfill.stream],
    onStopped: (name, removed) => {
      forgetRemoteGauges(metrics, name, removed);
      if (removed) refreshDlqGauge();
    },
  });
  metrics.collect("replication_connection_state", () => connectionStateSeries(manager));
  // Read at each scrape: a task waiting to apply ages with nothing else changing. Not of a disabled remote, nor a stale one (as replication_tasks_lag).
  metrics.collect("replication_lag_seconds", () => manager.remotes().flatMap((remote) => {
    const ms = manager.connectionState(remote) === "disabled" ? undefined : historyReceiver.lagMs(remote);
    return ms === undefined ? [] : [{ labels: { remote_cluster: remote }, value: ms / 1000 }];
  }));
  metrics.unknownWhile("replication_lag_seconds", (labels) => historyReceiver.heard(labels.remote_cluster!).stale);
  // A server of this cluster that died mid-failover (another process on the PostgreSQL database)
  // leaves its HANDOVER to the others: reset once its failover's lock is free (resetAbandonedHandovers),
  // soon once a namespace is read in HANDOVER here, and every handoverResetIdleMs otherwise.
  const handoverReset = createHandoverReset({ db, log, onReset: () => namespaces.invalidate(), idleMs: opts.replication?.handoverResetIdleMs });
  core.handoverSeenHooks.add(handoverReset.seen);
  const failover = createGracefulFailover({
    db, namespaces, clusters: core.clusters, notifier, log, now, onReplicated: () => notifier.notify(NAMESPACE_QUEUE_KEY), onLeftInHandover: handoverReset.seen,
    withSessionLock: database.withSessionLock, targetProblem: createFailoverTargetCheck({ clusters: core.clusters, clients }),
    targetMovedOn: createFailoverTargetRecheck({ clusters: core.clusters, clients }), targetHolds: createTargetHolds({ clusters: core.clusters, clients }),
    members: createFailoverMembersCheck({ db, clusters: core.clusters, clients }),
    connectionState: (name) => manager.connectionState(name), namespacePollsLateMs: opts.replication?.namespacePollsLateMs,
  });
  // The history sender's idle re-reads read the namespace queue's max too, for the namespace sender's polls.
  const namespaceQueue = createNamespaceQueueWatch(notifier, NAMESPACE_QUEUE_KEY);
  const sender = createReplicationSender({
    db, cluster, notifier, metrics, outboxMarks: core.outboxMarks, outboxTail: core.outboxTail, recheckMs: opts.replication?.senderRecheckMs, namespaceQueue,
  });
  const onChanged = () => {
    sender.forgetPeers();
    // A remote connected now may have been sent namespaces again (resendNamespacesTo).
    notifier.notify(NAMESPACE_QUEUE_KEY);
    refreshDlqGauge();
    return manager.refresh();
  };
  return {
    refreshDlqGauge, readDlqGauge, clients, redirections, applier, dlq, manager, backfill, sweep, sender, failover, namespaceReceiver,
    remotes: createRemoteClusters({
      db, current: cluster, clients, onChanged,
      onConnected: async (tx, remote) => {
        await startBackfillsFrom(tx, remote, cluster.clusterName, now());
        await resendNamespacesTo(tx, remote, cluster.clusterName);
      },
      onRemoved: (tx, remote) => stopBackfillsFrom(tx, remote, now()),
    }),
    cleanup: createReplicationCleanup({
      db, log, metrics, intervalMs: opts.replication?.cleanupIntervalMs, disabledGraceMs: opts.replication?.disabledRemoteGraceMs,
    }),
    // A failed read of replication_dlq_size (refreshGauge) is mended here, not only by the next event that reads it.
    dlqGauge: createPeriodic(() => dlq.readGauge(true), { name: "reading the replication DLQ size", log, intervalMs: opts.replication?.dlqGaugeIntervalMs ?? 10_000 }),
    handoverReset,
    namespaceSender: createNamespaceSender({ db, currentCluster: cluster.clusterName, wake: notifier, watch: namespaceQueue }),
    status: createReplicationStatus({
      db, cluster, connectionState: (name) => manager.connectionState(name), inboundProgress: historyReceiver.progress,
      inboundHeard: historyReceiver.heard, namespaceHeard: namespaceReceiver.heard,
      forwardedCalls: redirections.recent, dlqSizes: dlq.sizes,
    }),
  };
}

/** What wireReplication made, for the routes and the server. */
export type Replication = ReturnType<typeof wireReplication>;

/**
 * Drops the gauges of a remote whose streams stopped: its inbound lag is unknown once disabled
 * (as `replication status` says), and nothing of a removed remote is current.
 */
function forgetRemoteGauges(metrics: Metrics, name: string, removed: boolean): void {
  const remote = { remote_cluster: name };
  metrics.remove("replication_tasks_lag", remote);
  metrics.remove("replication_stream_received_tasks", remote);
  if (removed) metrics.remove("namespace_replication_task_ack_level", remote);
}
