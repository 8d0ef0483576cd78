import type { CurrentCluster } from "./cluster/bootstrap";
import { createClusterDirectory } from "./cluster/directory";
import { NAMESPACE_QUEUE_KEY } from "../replication/namespace-sender";
import { createOutboxMarks } from "../replication/outbox";
import { createOutboxTail } from "../replication/outbox-tail";
import type { Config } from "./config/schema";
import { createHistoryEngine } from "./history/engine";
import { createEventNotifier } from "./history/notifier";
import { createHistoryQueries } from "./history/queries";
import { createTimerQueue } from "./history/timer-queue";
import { createTurnTaking } from "./turn-taking";
import { createWriter } from "./history/writer";
import { createNamespaceRegistry, type NamespaceRecord } from "./namespace/registry";
import type { Logger } from "./observability/log";
import { createMetrics } from "./observability/metrics";
import type { Database } from "./persistence/database";
import type { ServerOptions } from "./server";

/** What every wiring step takes: the config and options, and what createTernServer opened. */
export interface Base {
  config: Config;
  opts: ServerOptions;
  log: Logger;
  now: () => Date;
  database: Database;
  cluster: CurrentCluster;
}

/** One cluster's own parts: namespaces, history writes and reads, timers. */
export function wireCore({ config, opts, log, now, database, cluster }: Base) {
  const { db } = database;
  const metrics = createMetrics();
  const clusters = createClusterDirectory(db, cluster);
  const notifier = createEventNotifier();
  // Becoming active (a failover here or replicated from a peer): due timers fire here now.
  // Hooks of what is wired later (the conflict sweep, wireReplication).
  const activatedHooks = new Set<(ns: NamespaceRecord) => void>();
  const onActivated = (ns: NamespaceRecord) => {
    void timers.rescan();
    for (const hook of activatedHooks) hook(ns);
  };
  // Every namespace change saved here, replicated or made here: a forwarded failover's wait for its
  // switch reads them (operator-handler.ts), as one that overtook it. A Set: a hook may
  // unsubscribe itself as it is called.
  const changedHooks = new Set<(ns: NamespaceRecord) => void>();
  const onChanged = (ns: NamespaceRecord) => {
    for (const hook of changedHooks) hook(ns);
  };
  const whenChanged = (hook: (ns: NamespaceRecord) => void) => (changedHooks.add(hook), () => void changedHooks.delete(hook));
  // A namespace read in HANDOVER: the abandoned-handover reset (wireReplication) runs soon.
  const handoverSeenHooks = new Set<() => void>();
  const registry = createNamespaceRegistry({
    db, clusters, now, onReplicated: () => notifier.notify(NAMESPACE_QUEUE_KEY), onActivated, onChanged,
    onHandoverSeen: () => handoverSeenHooks.forEach((hook) => hook()),
  });
  const namespaces = opts.wrapNamespaces?.(registry) ?? registry;
  // Task ids committed per shard: the writer records them, the sender's long polls read them.
  const outboxMarks = createOutboxMarks();
  // The tasks committed here lately, with their events: a caught-up peer is sent them without a read back.
  const outboxTail = createOutboxTail({ currentCluster: cluster.clusterName });
  const writerDeps = {
    db, pipelined: database.pipelined, cluster, limits: config.limits, metrics, log, now, beforeCommit: opts.beforeCommit, notifier, outboxMarks, outboxTail,
  };
  const writer = createWriter(writerDeps);
  // The replication receiver's page transactions, on the applier's own connections (database.ts).
  const applyWriter = database.applies
    ? createWriter({ ...writerDeps, pipelined: database.applies.pipelined, oneStatementDb: database.applies.db })
    : writer;
  if (database.applies?.synchronousBecause) {
    log.warn("replication applies commit synchronously (each waits for its WAL flush)", { reason: database.applies.synchronousBecause });
  }
  // Clients' calls go before the timer queue's next batch (a drain's): turn-taking.ts.
  const turns = createTurnTaking();
  const timers = createTimerQueue({ db, writer, namespaces, notifier, metrics, log, currentCluster: cluster.clusterName, now, turns });
  const engine = createHistoryEngine({
    db, cluster, limits: config.limits, metrics, log, now, namespaces, notifier, writer,
    onTimerCreated: (at) => timers.scheduled(at),
  });
  const queries = createHistoryQueries({ db, namespaces, notifier });
  return { db, metrics, clusters, notifier, outboxMarks, outboxTail, onActivated, activatedHooks, onChanged, changedHooks, handoverSeenHooks, whenChanged, namespaces, writer, applyWriter, turns, timers, engine, queries };
}

/** What wireCore made, for the wiring after it. */
export type Core = ReturnType<typeof wireCore>;
