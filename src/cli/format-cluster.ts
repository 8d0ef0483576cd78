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
export function clusterTable(list: readonly ClusterInfo[]): string {
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
  return formatTable(headers, rows);
}

/** One line after an upsert: `Cluster clusterB at localhost:8233: connection enabled (connecting)`. */
export function upsertSummary(c: ClusterInfo): string {
  const state = c.enableConnection ? `enabled${c.connectionState ? ` (${c.connectionState})` : ""}` : "disabled";
  return `Cluster ${c.clusterName} at ${c.rpcAddress}: connection ${state}; initial failover version ${c.initialFailoverVersion}, ${c.historyShardCount} shards\n`;
}
