import { toJson } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  GetReplicationStatusResponseSchema,
  type GetReplicationStatusResponse,
  type RemoteClusterReplicationStatus,
  type ShardReplicationStatus,
} from "../../gen/tern/admin/v1/service_pb";
import type { GroupCommand, LeafCommand } from "../command";
import { formatTable } from "../output";
import { atText, forwardedCallsNote } from "../format-cluster";
import { dlqCommand } from "./replication-dlq";
import { verifyCommand } from "./replication-verify";
import { liveCopyWayOut } from "../../../replication/held-way-out";

/** The connection column: the live state, or "disabled" when enable_connection is off. */
function connectionOf(remote: RemoteClusterReplicationStatus): string {
  if (!remote.enableConnection) return "disabled";
  return remote.connectionState || "unknown";
}

function shardRow(remote: RemoteClusterReplicationStatus, direction: string, s: ShardReplicationStatus): string[] {
  // Inbound, from a remote not heard from lately: what it wrote since is not seen here.
  const unknown = direction === "inbound" && remote.inboundLagUnknown;
  return [
    remote.clusterName,
    direction,
    String(s.shardId),
    String(s.maxTaskId),
    String(s.ackedTaskId),
    unknown ? "unknown" : String(s.lagTasks),
    unknown ? "unknown" : String(s.lagMs),
    connectionOf(remote),
  ];
}


/** Since when, as a NOTE line says it: the time and how long ago, or since the server started. */
function sinceText(heardAt: Timestamp | undefined, now: number): string {
  return heardAt ? `since ${atText(heardAt, now)}` : "since this server started";
}

/** A NOTE for each remote that left calls forwarded to it unanswered in the last minute (format-cluster.ts forwardedCallsNote). */
function forwardedLines(res: GetReplicationStatusResponse, now: number): string {
  return res.remotes.map((r) => forwardedCallsNote(res.clusterName, r.clusterName, r.forwardedCalls, now)).join("");
}

/** Whether the ns row's lag is unknown: the remote unheard, or its namespace polls failing (a server before namespaceLagUnknown: the first only). */
const namespaceLagUnknown = (r: RemoteClusterReplicationStatus) => r.inboundLagUnknown || r.namespaceLagUnknown;

/** A line for each remote whose inbound lag is unknown, or only its namespace lag: since when, why, and where to read it. */
function unheardLines(res: GetReplicationStatusResponse, now: number): string {
  return res.remotes
    .map((r) => {
      if (r.inboundLagUnknown) {
        const why = r.inboundError ? `: ${r.inboundError};` : ":";
        return `NOTE: ${res.clusterName} has heard nothing from ${r.clusterName} ${sinceText(r.inboundHeardAt, now)}${why} its inbound lag is unknown ` +
          `(the MAX TASK ID shown is as of then; tasks ${r.clusterName} wrote since are not seen here: its own outbound rows show them)\n`;
      }
      if (!r.namespaceLagUnknown) return "";
      const why = r.namespaceError ? `: ${r.namespaceError}` : "";
      return `NOTE: ${res.clusterName}'s namespace replication from ${r.clusterName} has had no answer ${sinceText(r.namespaceHeardAt, now)}${why}; ` +
        `its ns lag is unknown (the MAX TASK ID shown is as of then; namespace changes ${r.clusterName} made since are not seen here)\n`;
    })
    .join("");
}

/**
 * The response as protobuf JSON, but with lagTasks and lagMs null in the inbound rows of a
 * remote whose inbound lag is unknown, and namespaceLagTasks null: the numbers kept are as of
 * inboundHeardAt, and a script reading only lagTasks took them for current (a lag of 0, omitted,
 * for caught up). Protobuf JSON readers take null as unset, so the text still parses as a
 * GetReplicationStatusResponse.
 */
export function replicationStatusJson(res: GetReplicationStatusResponse): string {
  type Remote = { inbound?: object[]; namespaceLagTasks?: string | null };
  const json = toJson(GetReplicationStatusResponseSchema, res) as { remotes?: Remote[] };
  for (const [i, remote] of (json.remotes ?? []).entries()) {
    if (res.remotes[i]!.inboundLagUnknown) for (const row of remote.inbound ?? []) Object.assign(row, { lagTasks: null, lagMs: null });
    if (namespaceLagUnknown(res.remotes[i]!)) remote.namespaceLagTasks = null;
  }
  return JSON.stringify(json, null, 2) + "\n";
}

/** The ns rows' LAG (MS): namespace replication's lag is counted in tasks only; the footnote under the table says so. */
const NOT_MEASURED = "-";
const NOT_MEASURED_NOTE = `LAG (MS) ${NOT_MEASURED}: not measured for namespace replication (shard ns), whose lag is counted in tasks only\n`;

/** Namespace replication as one more inbound row, shard "ns": unknown with the others (its tasks come on the same link), or alone when its polls fail. */
function namespaceRow(remote: RemoteClusterReplicationStatus): string[] {
  const lag = remote.namespaceMaxTaskId - remote.namespaceAckedTaskId;
  return [
    remote.clusterName,
    "inbound",
    "ns",
    String(remote.namespaceMaxTaskId),
    String(remote.namespaceAckedTaskId),
    namespaceLagUnknown(remote) ? "unknown" : String(lag > 0n ? lag : 0n),
    NOT_MEASURED,
    connectionOf(remote),
  ];
}

/** The status table: one row per remote cluster, direction and shard. */
export function replicationStatusTable(res: GetReplicationStatusResponse, now = Date.now()): string {
  const headers = ["REMOTE", "DIRECTION", "SHARD", "MAX TASK ID", "ACKED TASK ID", "LAG (TASKS)", "LAG (MS)", "CONNECTION"];
  const rows = res.remotes.flatMap((remote) => [
    ...remote.inbound.map((s) => shardRow(remote, "inbound", s)),
    namespaceRow(remote),
    ...remote.outbound.map((s) => shardRow(remote, "outbound", s)),
  ]);
  const title = `Cluster ${res.clusterName || "(unnamed)"}`;
  const warnings = unconnectedLines(res) + heldLines(res);
  if (rows.length === 0) return `${title}: no remote clusters (connect one with 'tern operator cluster upsert')\n${warnings}`;
  const dlq = res.remotes.map((r) => `${r.clusterName} ${r.dlqSize}`).join(", ");
  return `${title}
${formatTable(headers, rows)}${NOT_MEASURED_NOTE}DLQ (tasks per source): ${dlq}
${unheardLines(res, now)}${forwardedLines(res, now)}${heldBackLines(res)}${warnings}`;
}

/** How old a connected remote's oldest unacked task here is before a NOTE says the remote holds the queue back (one keeping up acks within a second or so). */
const HELD_BACK_AFTER_MS = 60_000n;

/**
 * A line for each remote disabled past its grace whose tasks the cleanup deleted (it backfills once
 * enabled), and for each remote whose acks this cluster's replication queue waits for to clean up: its
 * connection disabled or not well, or its oldest unacked task a minute old; with how many tasks
 * wait in how many shards, and how to release them. The outbound rows said it a shard at a time
 * (512 rows at 512 shards), and nothing said that the queue's cleanup waited on that remote.
 */
function heldBackLines(res: GetReplicationStatusResponse): string {
  return res.remotes
    .map((r) => {
      const behind = r.outbound.filter((s) => s.lagTasks > 0n);
      const oldest = behind.reduce((m, s) => (s.lagMs > m ? s.lagMs : m), 0n);
      const state = connectionOf(r);
      const skipped = r.cleanedPastShards
        ? `NOTE: ${r.clusterName} was disabled past its grace (replication.disabledRemoteGraceMs): ${res.clusterName} deleted the tasks it had not acked in ` +
          `${r.cleanedPastShards} shard(s); once enabled, it is told so and backfills the namespaces both list from ${res.clusterName}\n`
        : "";
      // Past its grace it holds no task here: what it lacks comes by backfill, not from the queue.
      if (skipped && state === "disabled") return skipped;
      if (!behind.length || (state === "connected" && oldest < HELD_BACK_AFTER_MS)) return skipped;
      const tasks = behind.reduce((n, s) => n + s.lagTasks, 0n);
      const why = state === "connected" ? `its oldest unacked task is ${oldest / 1000n} s old` : state === "disabled" ? "its connection is disabled here" : `its connection: ${state}`;
      return `NOTE: ${r.clusterName} is ${tasks} replication task(s) behind in ${behind.length} of ${r.outbound.length} of ${res.clusterName}'s shard(s) (${why}): ` +
        `${res.clusterName} keeps those shards' tasks until it acks them. If ${r.clusterName} is retired, take it out of its namespaces' clusters and remove it ` +
        `('tern operator cluster remove --name ${r.clusterName}'): the tasks kept for it alone go at the next cleanup\n` + skipped;
    })
    .join("");
}

/** One warning line per namespace member not connected here: nothing of that namespace replicates between them. */
function unconnectedLines(res: GetReplicationStatusResponse): string {
  const here = res.clusterName;
  return res.unconnected
    .map((u) =>
      `WARNING: namespace ${u.namespace} lists ${u.clusterName}, which is not connected to ${here}: nothing of ${u.namespace} replicates between them` +
      (u.active ? ` (it is active in ${u.clusterName}: its writes do not reach ${here})` : "") +
      `; connect them both ways ('tern operator cluster upsert' on each)\n`)
    .join("");
}

/** One warning line per namespace whose replicated tasks are held here, with what to do. */
function heldLines(res: GetReplicationStatusResponse): string {
  const here = res.clusterName;
  return res.heldNamespaces
    .map((h) =>
      `WARNING: namespace ${h.namespace} (id ${h.namespaceId}) from ${h.sourceCluster} is not applied here: ${here} holds a namespace ${h.namespace} with another id (${h.localNamespaceId}); ` +
      `${h.tasks} task(s) of it held since ${h.heldSince ? timestampDate(h.heldSince).toISOString() : "?"}, the other namespaces' go on. ` +
      `If ${h.localNamespaceId} is a stale copy (deleted on its active cluster), delete it here ('tern operator namespace delete ${h.namespace}'): the held tasks then apply. ` +
      `${liveCopyWayOut(here, h.sourceCluster, h.namespace, h.namespaceId, h.localNamespaceId)}\n`)
    .join("");
}

const status: LeafCommand = {
  kind: "leaf",
  name: "status",
  summary: "Show replication positions and lag per remote cluster and shard",
  details: [
    "inbound rows: what this cluster pulls from the remote, per remote shard (MAX TASK ID is",
    "the highest task id the remote has, ACKED TASK ID what this cluster applied); the row",
    'with shard "ns" is namespace replication.',
    "outbound rows: what the remote acked of this cluster's tasks, per local shard.",
    "LAG (TASKS) is the tasks past ACKED TASK ID the source's queue still holds (not those deleted",
    "before the other cluster was added or past its grace, which it repairs by backfill): in inbound",
    "rows counted from the remote's first task sent after ACKED TASK ID, as replication_tasks_lag; in",
    "outbound rows as replication_outbound_tasks_lag; LAG (MS) is the delay the server measures",
    "(none for the ns row, '-': namespace replication's lag is counted in tasks only).",
    "An inbound lag (the ns row's too) is 'unknown' while the remote has not been heard from",
    "lately (it sends at least every 10 s): what it wrote since is not seen; a NOTE line says",
    "since when. The ns row's lag is 'unknown' too while the polls of the remote's namespace",
    "queue fail (its history may still come): a NOTE line says since when and why.",
    "A NOTE line says which remote left calls forwarded to it (dcRedirectionPolicy) unanswered in",
    "the last minute, timed out or unreachable, and when it last answered one: its replication",
    "stream, and so CONNECTION, may be well meanwhile.",
    "The DLQ line counts the tasks from each remote held in the DLQ ('tern replication dlq list').",
    "A NOTE line says which remote the replication queue here keeps tasks for (its connection",
    "disabled or not well, or its oldest unacked task a minute old), how many in how many shards:",
    "they are cleaned up once it acks them, or once it is removed.",
    "A WARNING line follows for each cluster a global namespace here lists that is not connected",
    "to this one: nothing of that namespace replicates between the two.",
    "A WARNING line follows for each namespace whose replicated changes are held here: its name is",
    "here with another id (a stale copy of one deleted on its active cluster and registered again);",
    "delete that copy here and they apply.",
    "With -o json, prints the GetReplicationStatusResponse as protobuf JSON; an unknown inbound",
    "lag (inboundLagUnknown) is lagTasks and lagMs null in that remote's inbound rows, and",
    "namespaceLagTasks null (also while namespaceLagUnknown; namespaceError says why).",
  ].join("\n"),
  flags: [],
  async run(ctx) {
    const res = await ctx.admin().getReplicationStatus({}, { signal: ctx.signal });
    ctx.out(ctx.format === "json" ? replicationStatusJson(res) : replicationStatusTable(res));
  },
};

/** `tern replication ...`. */
export const replicationCommand: GroupCommand = {
  kind: "group",
  name: "replication",
  summary: "Inspect, repair and verify replication between clusters",
  commands: [status, dlqCommand, verifyCommand],
};
