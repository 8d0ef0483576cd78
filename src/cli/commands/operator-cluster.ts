import { ClusterInfoSchema, DescribeClusterResponseSchema } from "../../gen/tern/operator/v1/service_pb";
import type { GroupCommand, LeafCommand } from "../command";
import { clusterTable, describeCluster, forwardedCallsNote, leftUnanswered } from "../format-cluster";
import { listJson, messageJson } from "../output";
import { collectPages } from "../paging";
import { flagOrPositional } from "./common-flags";
import { removeRemoteClusterCommand, upsertRemoteClusterCommand } from "./remote-cluster";

const describe: LeafCommand = {
  kind: "leaf",
  name: "describe",
  summary: "Describe the cluster that answers (or a connected one)",
  details: [
    "For a remote, a NOTE follows when it left calls this server forwarded to it unanswered in the",
    "last minute, as in 'operator cluster list' (forwardedCalls in JSON).",
  ].join("\n"),
  positionals: "[CLUSTER]",
  maxPositionals: 1,
  flags: [
    { name: "cluster", kind: "string", valueName: "NAME", description: "Cluster to describe (default: the one that answers)" },
  ],
  async run(ctx, args) {
    const clusterName = flagOrPositional(args, "cluster", "cluster") ?? "";
    const res = await ctx.operator().describeCluster({ clusterName }, { signal: ctx.signal });
    if (ctx.format === "json") return ctx.out(messageJson(DescribeClusterResponseSchema, res));
    const c = res.cluster;
    if (!c) return;
    // The NOTE names the cluster that forwarded them, the one answering: asked its name only when there is a NOTE.
    const note = !c.isCurrentCluster && leftUnanswered(c.forwardedCalls);
    const from = note ? (await ctx.operator().describeCluster({}, { signal: ctx.signal })).cluster?.clusterName || "this cluster" : "";
    ctx.out(describeCluster(c) + (note ? forwardedCallsNote(from, c.clusterName, c.forwardedCalls, Date.now()) : ""));
  },
};

const list: LeafCommand = {
  kind: "leaf",
  name: "list",
  summary: "List this cluster and the clusters connected to it",
  details: [
    "Columns: NAME, ID, ADDRESS, CURRENT (true for this cluster), ENABLED (enable_connection),",
    "CONNECTION (current for this cluster; for a remote connected, connecting, unknown (its",
    "streams restarting), disabled or error: ...), INITIAL VERSION, SHARDS. A NOTE follows for a",
    "remote that left calls this server forwarded to it unanswered in the last minute: CONNECTION",
    "reads the replication stream, which may be well while they fail (forwardedCalls in JSON).",
    'With -o json, prints { "clusters": [ClusterInfo, ...] } with every page merged.',
  ].join("\n"),
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
  summary: "Describe, list, connect and disconnect clusters",
  commands: [describe, list, upsertRemoteClusterCommand("upsert"), removeRemoteClusterCommand("remove", "name")],
};

/** `tern admin cluster ...`: tctl's spelling of the same commands, so its runbooks work verbatim. */
export const adminClusterCommand: GroupCommand = {
  kind: "group",
  name: "cluster",
  summary: "Connect and disconnect remote clusters (tctl spelling)",
  commands: [
    upsertRemoteClusterCommand("upsert-remote-cluster"),
    removeRemoteClusterCommand("remove-remote-cluster", "cluster"),
    describe,
    list,
  ],
};
