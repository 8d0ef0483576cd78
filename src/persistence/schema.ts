import { sql } from "drizzle-orm";
import {
  type AnyPgColumn,
  bigint,
  boolean,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
} from "drizzle-orm/pg-core";

const big = (name: string) => bigint(name, { mode: "number" });
const ts = (name: string) => timestamp(name, { withTimezone: true, mode: "date" });

/** This cluster's persisted identity and, later, its remote clusters (one row each). */
export const clusterMetadata = pgTable("cluster_metadata", {
  clusterName: text("cluster_name").primaryKey(),
  clusterId: text("cluster_id").notNull(),
  isCurrent: boolean("is_current").notNull(),
  rpcAddress: text("rpc_address").notNull(),
  historyShardCount: integer("history_shard_count").notNull(),
  failoverVersionIncrement: big("failover_version_increment").notNull(),
  initialFailoverVersion: big("initial_failover_version").notNull(),
  isGlobalNamespaceEnabled: boolean("is_global_namespace_enabled").notNull(),
  enableConnection: boolean("enable_connection").notNull().default(true),
  /** When the connection was disabled (null while enabled); an upsert that keeps it disabled keeps it. */
  disabledAt: ts("disabled_at"),
  createdAt: ts("created_at").notNull().defaultNow(),
  updatedAt: ts("updated_at").notNull().defaultNow(),
});

/** One failover in a namespace's history; forced: true forced, false graceful, absent in entries from before it was kept (no migration: the column is JSON). */
export type FailoverHistoryEntry = { time: string; version: number; from: string; to: string; forced?: boolean; fromVersion?: number };

export const namespaces = pgTable("namespaces", {
  id: text("id").primaryKey(),
  name: text("name").notNull().unique("namespaces_name_key"),
  state: text("state").notNull(),
  description: text("description").notNull().default(""),
  ownerEmail: text("owner_email").notNull().default(""),
  data: jsonb("data").$type<Record<string, string>>().notNull().default({}),
  retentionSeconds: big("retention_seconds").notNull(),
  isGlobal: boolean("is_global").notNull(),
  activeClusterName: text("active_cluster_name").notNull(),
  clusters: jsonb("clusters").$type<string[]>().notNull(),
  replicationState: text("replication_state").notNull().default("NORMAL"),
  configVersion: big("config_version").notNull(),
  failoverVersion: big("failover_version").notNull(),
  failoverHistory: jsonb("failover_history").$type<FailoverHistoryEntry[]>().notNull().default([]),
  createdAt: ts("created_at").notNull().defaultNow(),
  updatedAt: ts("updated_at").notNull().defaultNow(),
});

/** Per-shard counters; locking a shard row orders the shard's replicated writes. */
export const shards = pgTable("shards", {
  shardId: integer("shard_id").primaryKey(),
  nextTaskId: big("next_task_id").notNull().default(1),
});

export type VersionHistoryItem = { eventId: number; version: number };

/**
 * A run in ZOMBIE state: the predicate of executions_zombie and of the conflict sweep's query
 * (replication/conflict-sweep.ts). A literal, not a parameter: PostgreSQL uses a partial index
 * only for a query whose predicate implies the index's, and a generic plan of a prepared
 * statement knows no parameter's value.
 */
export const isZombie = (status: AnyPgColumn) => sql`${status} = 'ZOMBIE'`;

/** A kept branch whose requests are not all on the run's current branch yet: history_branches_unsettled's predicate, and the sweep's. */
export const isUnsettledBranch = (b: { reappliedThrough: AnyPgColumn; versionHistory: AnyPgColumn }) =>
  sql`${b.reappliedThrough} < (${b.versionHistory} -> -1 ->> 'eventId')::bigint`;

export const executions = pgTable(
  "executions",
  {
    namespaceId: text("namespace_id").notNull(),
    workflowId: text("workflow_id").notNull(),
    runId: text("run_id").notNull(),
    shardId: integer("shard_id").notNull(),
    workflowType: text("workflow_type").notNull(),
    taskQueue: text("task_queue").notNull(),
    status: text("status").notNull(),
    startTime: ts("start_time").notNull(),
    closeTime: ts("close_time"),
    executionTimeoutMs: big("execution_timeout_ms").notNull().default(0),
    nextEventId: big("next_event_id").notNull(),
    lastWriteVersion: big("last_write_version").notNull(),
    versionHistory: jsonb("version_history").$type<VersionHistoryItem[]>().notNull(),
    cancelRequested: boolean("cancel_requested").notNull().default(false),
    /** Bumped by every write; writes compare it (optimistic concurrency). */
    dbVersion: big("db_version").notNull().default(1),
  },
  (t) => [
    primaryKey({ columns: [t.namespaceId, t.workflowId, t.runId] }),
    uniqueIndex("executions_one_open_run").on(t.namespaceId, t.workflowId).where(sql`${t.status} = 'RUNNING'`),
    index("executions_ns_start").on(t.namespaceId, t.startTime),
    // The conflict sweep at every start and activation: without it a scan of every run.
    index("executions_zombie").on(t.namespaceId).where(isZombie(t.status)),
  ],
);

export const historyEvents = pgTable(
  "history_events",
  {
    namespaceId: text("namespace_id").notNull(),
    workflowId: text("workflow_id").notNull(),
    runId: text("run_id").notNull(),
    eventId: big("event_id").notNull(),
    version: big("version").notNull(),
    eventTime: ts("event_time").notNull(),
    eventType: text("event_type").notNull(),
    /** Protobuf JSON of the event's attributes. */
    attributes: jsonb("attributes").$type<Record<string, unknown>>().notNull(),
  },
  (t) => [primaryKey({ columns: [t.namespaceId, t.workflowId, t.runId, t.eventId] })],
);

/** Idempotency: the first result of each request id, written with its events. */
export const requestIds = pgTable(
  "request_ids",
  {
    namespaceId: text("namespace_id").notNull(),
    requestId: text("request_id").notNull(),
    workflowId: text("workflow_id").notNull(),
    runId: text("run_id").notNull(),
    eventId: big("event_id").notNull(),
    createdAt: ts("created_at").notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.namespaceId, t.workflowId, t.requestId] })],
);

/** Transactional outbox of history replication (DESIGN.md section 3). */
export const replicationTasks = pgTable(
  "replication_tasks",
  {
    shardId: integer("shard_id").notNull(),
    taskId: big("task_id").notNull(),
    namespaceId: text("namespace_id").notNull(),
    workflowId: text("workflow_id").notNull(),
    runId: text("run_id").notNull(),
    firstEventId: big("first_event_id").notNull(),
    nextEventId: big("next_event_id").notNull(),
    version: big("version").notNull(),
    versionHistory: jsonb("version_history").$type<VersionHistoryItem[]>().notNull(),
    createdAt: ts("created_at").notNull().defaultNow(),
    /**
     * The writer's estimate of the task's events' size (their strings and bytes): what a page
     * read budgets by before rendering them. Null for tasks written before the column.
     */
    eventBytes: integer("event_bytes"),
  },
  (t) => [primaryKey({ columns: [t.shardId, t.taskId] })],
);

/** Durable timers (execution timeouts); deleted once fired or moot. */
export const timerTasks = pgTable(
  "timer_tasks",
  {
    id: text("id").primaryKey(),
    shardId: integer("shard_id").notNull(),
    fireAt: ts("fire_at").notNull(),
    kind: text("kind").notNull(),
    namespaceId: text("namespace_id").notNull(),
    workflowId: text("workflow_id").notNull(),
    runId: text("run_id").notNull(),
    version: big("version").notNull(),
  },
  // By run too: a run that closes deletes its timers (deleteTimers), which otherwise read them all.
  (t) => [index("timer_tasks_fire_at").on(t.fireAt), index("timer_tasks_run").on(t.namespaceId, t.workflowId, t.runId)],
);

/** Counters of queues that need gap-free ordering (e.g. "namespace"); the row lock orders writers. */
export const queueCounters = pgTable("queue_counters", {
  queue: text("queue").primaryKey(),
  nextId: big("next_id").notNull().default(1),
});

/** Namespace changes made on this cluster, for the remote clusters to pull (DESIGN.md section 2). */
export const namespaceReplicationTasks = pgTable("namespace_replication_tasks", {
  taskId: big("task_id").primaryKey(),
  namespaceId: text("namespace_id").notNull(),
  /** The namespace as it was after the change (NamespaceRecord, dates as ISO strings). */
  namespace: jsonb("namespace").$type<Record<string, unknown>>().notNull(),
  createdAt: ts("created_at").notNull().defaultNow(),
});

/**
 * Namespace replication tasks received and not applied: the create of a namespace whose name
 * this cluster holds with another id, and every later task of that namespace id from the same
 * source, in order (replication/namespace-held.ts). Applied, and deleted, once that copy is gone.
 */
export const heldNamespaceTasks = pgTable(
  "held_namespace_tasks",
  {
    sourceCluster: text("source_cluster").notNull(),
    taskId: big("task_id").notNull(),
    namespaceId: text("namespace_id").notNull(),
    namespaceName: text("namespace_name").notNull(),
    /** The id of the namespace of that name here when the task was held. */
    localNamespaceId: text("local_namespace_id").notNull(),
    /** The NamespaceReplicationTask as protobuf JSON. */
    task: jsonb("task").$type<Record<string, unknown>>().notNull(),
    heldAt: ts("held_at").notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.sourceCluster, t.taskId] }), index("held_namespace_tasks_namespace_idx").on(t.namespaceId)],
);

/**
 * Replication positions, persisted on both sides. inbound: how far this cluster applied
 * a remote's queue; outbound: how far a remote acked this cluster's queue.
 */
export const replicationAckLevels = pgTable(
  "replication_ack_levels",
  {
    remoteCluster: text("remote_cluster").notNull(),
    direction: text("direction").notNull(),
    /** "history" (per shard) or "namespace" (shard 0). */
    queue: text("queue").notNull(),
    shardId: integer("shard_id").notNull(),
    ackLevel: big("ack_level").notNull().default(0),
    /** Highest task id known on the producing side when last seen. */
    maxTaskId: big("max_task_id").notNull().default(0),
    /** Commit time on the source of the last applied task (inbound lag). */
    lastAppliedCreatedAt: ts("last_applied_created_at"),
    /**
     * Outbound: how far cleanup deleted this queue's tasks past the remote's ack while it was
     * disabled past its grace (0: never). The sender tells the remote, which repairs by backfill.
     */
    cleanedThrough: big("cleaned_through").notNull().default(0),
    updatedAt: ts("updated_at").notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.remoteCluster, t.direction, t.queue, t.shardId] })],
);

/**
 * Replication DLQ (DESIGN.md section 6): a history task that failed past its retry budget,
 * written in the same transaction that moves the inbound ack past it.
 */
export const replicationDlq = pgTable(
  "replication_dlq",
  {
    sourceCluster: text("source_cluster").notNull(),
    /** The source's shard the task came from. */
    shardId: integer("shard_id").notNull(),
    taskId: big("task_id").notNull(),
    namespaceId: text("namespace_id").notNull(),
    workflowId: text("workflow_id").notNull(),
    runId: text("run_id").notNull(),
    firstEventId: big("first_event_id").notNull(),
    nextEventId: big("next_event_id").notNull(),
    version: big("version").notNull(),
    /**
     * The task's version history (its branch on the source): a merge fetches the events of that
     * branch, which need not be the source's current one by then. Null for entries written before
     * the column (merged from the source's current branch).
     */
    versionHistory: jsonb("version_history").$type<VersionHistoryItem[]>(),
    attempts: integer("attempts").notNull(),
    lastError: text("last_error").notNull(),
    createdAt: ts("created_at").notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.sourceCluster, t.shardId, t.taskId] })],
);

/** Backfill of a namespace's existing executions from a source cluster (progress survives restarts). */
export const backfillJobs = pgTable(
  "backfill_jobs",
  {
    namespaceId: text("namespace_id").notNull(),
    sourceCluster: text("source_cluster").notNull(),
    /** RUNNING, DONE, FAILED, or STOPPED (this cluster was taken out of the namespace, or its source removed here). */
    status: text("status").notNull(),
    /** Position in the source's execution listing (opaque to the database). */
    cursor: jsonb("cursor").$type<Record<string, unknown>>(),
    total: big("total").notNull().default(0),
    done: big("done").notNull().default(0),
    /** Runs it could not bring (a failure of the run's own): a job that walked the listing with any ends FAILED. */
    failed: big("failed").notNull().default(0),
    /** The job's own problems: runs it could not bring or skipped, why it ended FAILED. */
    lastError: text("last_error"),
    /** Why its current page failed (the source unreachable, this database busy), retried: cleared once a page is recorded. */
    retryError: text("retry_error"),
    startedAt: ts("started_at").notNull().defaultNow(),
    updatedAt: ts("updated_at").notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.namespaceId, t.sourceCluster] })],
);

/**
 * Non-current branches of a run's history (DESIGN.md section 4): after a divergence the
 * branch with the higher last version is current (history_events); each other branch is a
 * row here, with its version history and its events after the fork in historyBranchEvents.
 */
export const historyBranches = pgTable(
  "history_branches",
  {
    namespaceId: text("namespace_id").notNull(),
    workflowId: text("workflow_id").notNull(),
    runId: text("run_id").notNull(),
    branchId: integer("branch_id").notNull(),
    /** The last event this branch shares with the current branch when it was forked. */
    forkEventId: big("fork_event_id").notNull(),
    versionHistory: jsonb("version_history").$type<VersionHistoryItem[]>().notNull(),
    createdAt: ts("created_at").notNull().defaultNow(),
    /**
     * The branch's requests (signals, cancel requests) up to this event id are on the run's
     * current branch: re-applied, or found there, by this cluster while active. Settling a
     * run reads only the branch's events after it (0: none yet, read from the fork).
     */
    reappliedThrough: big("reapplied_through").notNull().default(0),
  },
  (t) => [
    primaryKey({ columns: [t.namespaceId, t.workflowId, t.runId, t.branchId] }),
    // The conflict sweep at every start and activation: settled branches stay, and are not read.
    index("history_branches_unsettled").on(t.namespaceId).where(isUnsettledBranch(t)),
  ],
);

/** Events of non-current branches after their fork point (same columns as history_events). */
export const historyBranchEvents = pgTable(
  "history_branch_events",
  {
    namespaceId: text("namespace_id").notNull(),
    workflowId: text("workflow_id").notNull(),
    runId: text("run_id").notNull(),
    branchId: integer("branch_id").notNull(),
    eventId: big("event_id").notNull(),
    version: big("version").notNull(),
    eventTime: ts("event_time").notNull(),
    eventType: text("event_type").notNull(),
    attributes: jsonb("attributes").$type<Record<string, unknown>>().notNull(),
  },
  (t) => [primaryKey({ columns: [t.namespaceId, t.workflowId, t.runId, t.branchId, t.eventId] })],
);
