import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { ForwardedCalls } from "../gen/tern/common/v1/common_pb";
import type { ClusterInfo } from "../gen/tern/operator/v1/service_pb";
import { formatKeyValues, formatTable, formatTime, truncate } from "./output";

/** Longest connection state a table cell shows; describe shows all of it. */
const STATE_WIDTH = 60;

/** How a cluster's connection reads in tables: the remote's live state, or "current" for this one. */
export function connectionLabel(c: ClusterInfo): string {
  if (c.isCurrentCluster) return "current";
  if (!c.enableConnection) return "disabled";
  return c.connectionState || "enabled";
}

/** `key: value` lines describing one cluster. */
export function describeCluster(c: ClusterInfo): string {
  return formatKeyValues([
    ["ClusterName", c.clusterName],
    ["ClusterId", c.clusterId],
    ["RpcAddress", c.rpcAddress],
    ["IsCurrentCluster", String(c.isCurrentCluster)],
    ["MasterClusterName", c.masterClusterName || undefined],
    ["EnableConnection", String(c.enableConnection)],
    ["ConnectionState", c.isCurrentCluster ? undefined : connectionLabel(c)],
    ["IsGlobalNamespaceEnabled", String(c.isGlobalNamespaceEnabled)],
    ["FailoverVersionIncrement", String(c.failoverVersionIncrement)],
    ["InitialFailoverVersion", String(c.initialFailoverVersion)],
    ["HistoryShardCount", String(c.historyShardCount)],
    ["ServerVersion", c.serverVersion || undefined],
    ["CreateTime", formatTime(c.createTime)],
  ]);
}

/**
 * The cluster list table: this cluster and every remote with its connection. Its booleans read
 * true or false, as `temporal operator cluster list` prints IsConnectionEnabled (this cluster's
 * own connection is enabled there too).
 */
export function clusterTable(list: readonly ClusterInfo[], now = Date.now()): string {
  const headers = ["NAME", "ID", "ADDRESS", "CURRENT", "ENABLED", "CONNECTION", "INITIAL VERSION", "SHARDS"];
  const rows = list.map((c) => [
    c.clusterName,
    c.clusterId,
    c.rpcAddress,
    String(c.isCurrentCluster),
    String(c.enableConnection),
    truncate(connectionLabel(c), STATE_WIDTH),
    String(c.initialFailoverVersion),
    String(c.historyShardCount),
  ]);
  const current = list.find((c) => c.isCurrentCluster)?.clusterName ?? "this cluster";
  return formatTable(headers, rows) + list.map((c) => forwardedCallsNote(current, c.clusterName, c.forwardedCalls, now)).join("");
}

/** One line after an upsert: `Cluster clusterB at localhost:8233: connection enabled (connecting)`. */
export function upsertSummary(c: ClusterInfo): string {
  const state = c.enableConnection ? `enabled${c.connectionState ? ` (${c.connectionState})` : ""}` : "disabled";
  return `Cluster ${c.clusterName} at ${c.rpcAddress}: connection ${state}; initial failover version ${c.initialFailoverVersion}, ${c.historyShardCount} shards\n`;
}

/** A time as a NOTE line says it: the time and how long ago. */
export function atText(t: Timestamp, now: number): string {
  const at = timestampDate(t);
  return `${at.toISOString()} (${Math.max(0, Math.round((now - at.getTime()) / 1000))} s ago)`;
}

/** Whether a remote left calls forwarded to it unanswered in the last minute (forwardedCallsNote prints a NOTE). */
export function leftUnanswered(f: ForwardedCalls | undefined): f is ForwardedCalls {
  return !!f && f.timeoutsLastMinute + f.unreachableLastMinute > 0;
}

/**
 * A NOTE line when the remote `to` left calls `from` forwarded to it unanswered in the last
 * minute: how many of each kind, the last with why and when, and when it last answered one; ""
 * otherwise. Its replication stream may be well meanwhile (a frontend too loaded to answer, a
 * proxy passing the stream and not unary calls): CONNECTION then reads connected, and only this
 * and client_redirection_errors say it.
 */
export function forwardedCallsNote(from: string, to: string, f: ForwardedCalls | undefined, now: number): string {
  if (!leftUnanswered(f)) return "";
  const last = f.lastUnansweredAt ? `, the last at ${atText(f.lastUnansweredAt, now)}: ${f.lastUnansweredType}, ${f.lastUnansweredError}` : "";
  const answered = f.lastAnsweredAt ? `it last answered one at ${atText(f.lastAnsweredAt, now)}` : "it has answered none since this server started";
  return `NOTE: ${f.timeoutsLastMinute + f.unreachableLastMinute} call(s) ${from} forwarded to ${to} in the last minute went unanswered ` +
    `(${f.timeoutsLastMinute} timed out, ${f.unreachableLastMinute} unreachable)${last}; ${answered}. Calls forwarded to namespaces active in ${to} ` +
    `fail here while that lasts, whatever its CONNECTION reads (the replication stream goes its own way): see client_redirection_errors\n`;
}
