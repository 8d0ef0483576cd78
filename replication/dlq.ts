import { z } from "zod";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { and, asc, count, eq, gt, or, sql, type SQL } from "drizzle-orm";
import { invalidArgument, loggableError, notFound } from "../src/errors";
import {
  ListReplicationDlqResponseSchema,
  ReplicationDlqEntrySchema,
  type ListReplicationDlqRequest,
  type ListReplicationDlqResponse,
  type ReplicationDlqEntry,
  type ReplicationTask,
} from "../src/gen/tern/admin/v1/service_pb";
import { runKeyText } from "../src/history/branch-store";
import type { RunKey } from "../src/history/execution-store";
import type { Logger } from "../src/observability/log";
import type { Metrics } from "../src/observability/metrics";
import { transaction } from "../src/persistence/call-signal";
import type { Db, Tx } from "../src/persistence/database";
import { runStatement, tableCodec, type StatementPart } from "../src/persistence/raw-statements";
import { decodeToken, encodeToken } from "../src/persistence/page-token";
import { clusterMetadata, replicationDlq } from "../src/persistence/schema";
import { shown } from "../src/shown";
import { versionHistoryFromProto } from "./version-history";

/** ListReplicationDlq's token: the last entry's source cluster, shard and task id. */
const DLQ_TOKEN = z.object({ s: z.string(), h: z.number().int(), t: z.number().int() });

export type DlqRow = typeof replicationDlq.$inferSelect;

/** What heldRuns found: the runs asked about that are held, and whether the shards hold an entry of any run. */
export interface HeldRuns {
  runs: Set<string>;
  any: boolean;
}

/** Which entries an operation covers: a source cluster and/or one of its shards, or all. */
export interface DlqFilter {
  sourceCluster?: string;
  shardId?: number;
}

export interface ReplicationDlqDeps {
  db: Db;
  metrics: Metrics;
  /** Where a failed read of the gauge goes (refreshGauge never rejects). */
  log: Logger;
}

/** Why a task whose run already has a DLQ entry is held back instead of applied out of order. */
export const HELD_BEHIND = "held: an earlier task of this run is in the DLQ (merge it first)";

/**
 * The replication DLQ (DESIGN.md section 6): history tasks that failed past their retry
 * budget, written in the apply transaction that moves the inbound ack past them, and the
 * later tasks of the same run, held until a merge so a run never gets a gap.
 */
export function createReplicationDlq({ db, metrics, log }: ReplicationDlqDeps) {
  /** The sources replication_dlq_size shows, and the remote clusters as last read. */
  let gauged = new Set<string>();
  let remotes: string[] = [];

  /** Stores a task inside the transaction that acks it; error is errorReason's text (or HELD_BEHIND). */
  async function add(tx: Tx, source: string, t: ReplicationTask, attempts: number, error: string): Promise<void> {
    await tx
      .insert(replicationDlq)
      .values({
        sourceCluster: source, shardId: t.shardId, taskId: Number(t.taskId), namespaceId: t.namespaceId, workflowId: t.workflowId,
        runId: t.runId, firstEventId: Number(t.firstEventId), nextEventId: Number(t.nextEventId), version: Number(t.version),
        versionHistory: versionHistoryFromProto(t.versionHistory?.items), attempts, lastError: error,
      })
      .onConflictDoNothing();
  }

  /**
   * Of runs, those ("namespaceId/workflowId/runId") with an entry from source's shards: their
   * tasks go to the DLQ too. Their entries are locked (FOR SHARE). A read while a merge deletes
   * a run's last entry waits for the merge's commit and finds it gone: read before, the task
   * was held behind it and could commit after the merge's last listing, left behind and its
   * run held. A merge that deletes one after the read waits for this transaction, and lists
   * what it held. Nothing is locked when no entry is of runs (the usual page).
   */
  async function heldRuns(tx: Tx, source: string, shardIds: readonly number[], runs: readonly RunKey[]): Promise<HeldRuns> {
    const keys = new Map(runs.map((r) => [runKeyText(r), [r.namespaceId, r.workflowId, r.runId]]));
    // Once per applied page: fixed text.
    const rows = await runStatement(tx, HELD_RUNS_TEXT, [source, JSON.stringify(shardIds), JSON.stringify([...keys.values()])]);
    const held = rows.flatMap((r) => (r.run_id === null ? [] : [runKeyText({ namespaceId: r.namespace_id as string, workflowId: r.workflow_id as string, runId: r.run_id as string })]));
    return { runs: new Set(held), any: rows[0]?.any_held === true };
  }

  /** Entries matching filter, in (source, shard, task id) order after the page token. */
  async function list(req: Pick<ListReplicationDlqRequest, "sourceCluster" | "shardId" | "pageSize" | "nextPageToken">): Promise<ListReplicationDlqResponse> {
    const pageSize = Math.min(Math.max(req.pageSize || 100, 1), 1000);
    const after = req.nextPageToken.length ? decodeToken(req.nextPageToken, DLQ_TOKEN) : undefined;
    const d = replicationDlq;
    const rows = await db
      .select()
      .from(d)
      .where(and(where(req), after ? or(gt(d.sourceCluster, after.s), and(eq(d.sourceCluster, after.s), sql`(${d.shardId}, ${d.taskId}) > (${after.h}, ${after.t})`)) : undefined))
      .orderBy(asc(d.sourceCluster), asc(d.shardId), asc(d.taskId))
      .limit(pageSize + 1);
    if (!rows.length && !after) await refuseBadFilter(req);
    const more = rows.length > pageSize;
    const page = rows.slice(0, pageSize);
    const last = page.at(-1);
    return create(ListReplicationDlqResponseSchema, {
      entries: page.map(entryOf),
      nextPageToken: more && last ? encodeToken({ s: last.sourceCluster, h: last.shardId, t: last.taskId }) : new Uint8Array(0),
    });
  }

  /** Every entry matching filter, in task order (merge walks them all). */
  const all = (filter: DlqFilter) =>
    db.select().from(replicationDlq).where(where(filter)).orderBy(asc(replicationDlq.sourceCluster), asc(replicationDlq.shardId), asc(replicationDlq.taskId));

  /** Deletes the entries filter matches; not once signal (the call's, persistence/call-signal.ts) fired. */
  async function purge(filter: DlqFilter, signal?: AbortSignal): Promise<number> {
    const rows = await transaction(db, (tx) => tx.delete(replicationDlq).where(where(filter)).returning({ taskId: replicationDlq.taskId }), signal);
    if (!rows.length) await refuseBadFilter(filter);
    await refreshGauge();
    return rows.length;
  }

  /**
   * A filter that found nothing must name what could hold entries: a source cluster this cluster knows as a remote (a typo,
   * or this cluster's own name, is not "empty"), and a shard within that source's shards (any remote's, with no source named).
   */
  async function refuseBadFilter(filter: DlqFilter): Promise<void> {
    const rows = await db.select({ name: clusterMetadata.clusterName, isCurrent: clusterMetadata.isCurrent, shards: clusterMetadata.historyShardCount }).from(clusterMetadata);
    const named = filter.sourceCluster ? rows.find((r) => r.name === filter.sourceCluster) : undefined;
    if (filter.sourceCluster) {
      if (!named) throw notFound(`cluster ${shown(filter.sourceCluster)} is not known here: it has no DLQ entries and is no remote cluster of this one`);
      if (named.isCurrent) {
        throw invalidArgument(`cluster ${shown(filter.sourceCluster)} is this cluster: its DLQ holds tasks from its remote clusters; name one of them, or ask the cluster that received ${shown(filter.sourceCluster)}'s tasks`);
      }
    }
    const sources = named ? [named] : rows.filter((r) => !r.isCurrent);
    if (!filter.shardId || !sources.length || sources.some((r) => filter.shardId! <= r.shards)) return;
    const ranges = sources.map((r) => `cluster ${r.name} has shards 1-${r.shards}`).join(", ");
    const why = named ? ranges : `no remote cluster of this one has it (${ranges})`;
    throw invalidArgument(`shard ${filter.shardId} is out of range: ${why}; a DLQ entry carries its source cluster's shard`);
  }

  /** Entries per source cluster. */
  async function sizes(): Promise<Map<string, number>> {
    const rows = await db.select({ source: replicationDlq.sourceCluster, n: count() }).from(replicationDlq).groupBy(replicationDlq.sourceCluster);
    return new Map(rows.map((r) => [r.source, Number(r.n)]));
  }

  /**
   * Sets replication_dlq_size for each remote cluster and each source with entries (0 for those
   * with none), and drops it for a source that is neither any more (a removed remote). The
   * remotes are read again only when asked (they changed), to keep the apply's refresh one read.
   * Never rejects: it runs after a commit (a task's move to the DLQ, a purge, a merge, a namespace's
   * delete), which a failed read must not make look failed; it is logged, and the next refresh
   * sets the gauge. Before 2026-12-07 a purge whose read failed answered UNAVAILABLE, made.
   */
  function refreshGauge({ readRemotes = false } = {}): Promise<void> {
    return readGauge(readRemotes).catch((e) => log.warn("reading the replication DLQ size failed", { error: loggableError(e) }));
  }

  /** What refreshGauge does, rejecting when the read fails (the periodic refresh logs a repeated failure once). */
  async function readGauge(readRemotes: boolean): Promise<void> {
    if (readRemotes) {
      const rows = await db.select({ name: clusterMetadata.clusterName }).from(clusterMetadata).where(eq(clusterMetadata.isCurrent, false));
      remotes = rows.map((r) => r.name);
    }
    const now = await sizes();
    const sources = new Set([...remotes, ...now.keys()]);
    for (const s of gauged) if (!sources.has(s)) metrics.remove("replication_dlq_size", { source_cluster: s });
    for (const s of sources) metrics.set("replication_dlq_size", { source_cluster: s }, now.get(s) ?? 0);
    gauged = sources;
  }

  return { add, heldRuns, list, all, purge, sizes, refreshGauge, readGauge, refuseBadFilter };
}

export type ReplicationDlq = ReturnType<typeof createReplicationDlq>;

function where(f: DlqFilter): SQL | undefined {
  return and(
    f.sourceCluster ? eq(replicationDlq.sourceCluster, f.sourceCluster) : undefined,
    f.shardId ? eq(replicationDlq.shardId, f.shardId) : undefined,
  );
}

/** The protobuf form of a row. */
export function entryOf(r: DlqRow): ReplicationDlqEntry {
  return create(ReplicationDlqEntrySchema, {
    sourceCluster: r.sourceCluster, shardId: r.shardId, taskId: BigInt(r.taskId), namespaceId: r.namespaceId, workflowId: r.workflowId,
    runId: r.runId, firstEventId: BigInt(r.firstEventId), nextEventId: BigInt(r.nextEventId), version: BigInt(r.version),
    attempts: r.attempts, lastError: r.lastError, createTime: timestampFromDate(r.createdAt),
  });
}

const dlqSql = tableCodec(replicationDlq);
const IN_SHARDS = `${dlqSql.name("shardId")} in (select value::int from jsonb_array_elements_text($2::jsonb))`;
const NONE_HELD =
  `1 / (not exists (select 1 from ${dlqSql.table} where ${dlqSql.name("sourceCluster")} = $1 and ${IN_SHARDS}))::int`;

/**
 * A part of a composite statement that fails it (a guard, see DIVISION_BY_ZERO) when any of
 * source's shards has an entry here: for pages applied without reading heldRuns first.
 */
export function noneHeldPart(source: string, shardIds: readonly number[]): StatementPart {
  return { ctes: [], columns: [["none_held", NONE_HELD]], params: [source, JSON.stringify(shardIds)] };
}
const HELD_RUNS_TEXT =
  `select l.namespace_id, l.workflow_id, l.run_id, s.any_held ` +
  `from (select exists (select 1 from ${dlqSql.table} where ${dlqSql.name("sourceCluster")} = $1 and ${IN_SHARDS}) as any_held) as s ` +
  `left join (select ${dlqSql.name("namespaceId")} as namespace_id, ${dlqSql.name("workflowId")} as workflow_id, ${dlqSql.name("runId")} as run_id ` +
  `from ${dlqSql.table} where ${dlqSql.name("sourceCluster")} = $1 and ${IN_SHARDS} ` +
  `and (${dlqSql.name("namespaceId")}, ${dlqSql.name("workflowId")}, ${dlqSql.name("runId")}) in (select r->>0, r->>1, r->>2 from jsonb_array_elements($3::jsonb) as r) ` +
  `for share) as l on true`;
