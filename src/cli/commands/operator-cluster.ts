import {
  type ClusterInfo,
  ClusterInfoSchema,
  DescribeClusterResponseSchema,
} from "../../gen/tern/operator/v1/service_pb";
import { getString } from "../args";
import type { GroupCommand, LeafCommand } from "../command";
import { UsageError } from "../errors";
import { formatKeyValues, formatTable, formatTime, listJson, messageJson } from "../output";
import { collectPages } from "../paging";

/** `key: value` lines describing one cluster. */
export function describeCluster(c: ClusterInfo): string {
  return formatKeyValues([
    ["ClusterName", c.clusterName],
    ["ClusterId", c.clusterId],
    ["RpcAddress", c.rpcAddress],
    ["IsCurrentCluster", String(c.isCurrentCluster)],
    ["MasterClusterName", c.masterClusterName],
    ["EnableConnection", String(c.enableConnection)],
    ["IsGlobalNamespaceEnabled", String(c.isGlobalNamespaceEnabled)],
    ["FailoverVersionIncrement", String(c.failoverVersionIncrement)],
    ["InitialFailoverVersion", String(c.initialFailoverVersion)],
    ["HistoryShardCount", String(c.historyShardCount)],
    ["ServerVersion", c.serverVersion],
    ["CreateTime", formatTime(c.createTime)],
  ]);
}

/** The cluster list table. */
export function clusterTable(list: readonly ClusterInfo[]): string {
  const headers = ["NAME", "ID", "ADDRESS", "INITIAL VERSION", "SHARDS", "CONNECTION", "CURRENT"];
  const rows = list.map((c) => [
    c.clusterName,
    c.clusterId,
    c.rpcAddress,
    String(c.initialFailoverVersion),
    String(c.historyShardCount),
    c.enableConnection ? "enabled" : "disabled",
    c.isCurrentCluster ? "yes" : "",
  ]);
  return formatTable(headers, rows);
}

const describe: LeafCommand = {
  kind: "leaf",
  name: "describe",
  summary: "Describe the cluster that answers (or a connected one)",
  positionals: "[CLUSTER]",
  maxPositionals: 1,
  flags: [
    { name: "cluster", kind: "string", valueName: "NAME", description: "Cluster to describe (default: the one that answers)" },
  ],
  async run(ctx, args) {
    const flag = getString(args, "cluster");
    const positional = args.positionals[0];
    if (flag && positional && flag !== positional) throw new UsageError("cluster given twice");
    const res = await ctx.operator().describeCluster({ clusterName: flag ?? positional ?? "" }, { signal: ctx.signal });
    if (ctx.format === "json") return ctx.out(messageJson(DescribeClusterResponseSchema, res));
    if (res.cluster) ctx.out(describeCluster(res.cluster));
  },
};

const list: LeafCommand = {
  kind: "leaf",
  name: "list",
  summary: "List this cluster and the clusters connected to it",
  details: 'With -o json, prints { "clusters": [ClusterInfo, ...] } with every page merged.',
  flags: [],
  async run(ctx) {
    const items = await collectPages(async (nextPageToken) => {
      const res = await ctx.operator().listClusters({ nextPageToken }, { signal: ctx.signal });
      return { items: res.clusters, nextPageToken: res.nextPageToken };
    });
    ctx.out(ctx.format === "json" ? listJson("clusters", ClusterInfoSchema, items) : clusterTable(items));
  },
};

/** `tern operator cluster ...`. */
export const operatorClusterCommand: GroupCommand = {
  kind: "group",
  name: "cluster",
  summary: "Describe and list clusters",
  commands: [describe, list],
};
