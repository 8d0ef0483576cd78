import { AddOrUpdateRemoteClusterResponseSchema } from "../../gen/tern/operator/v1/service_pb";
import { getBoolean, hasFlag, requireString } from "../args";
import type { LeafCommand } from "../command";
import { UsageError } from "../errors";
import { upsertSummary } from "../format-cluster";
import { flagOrPositional } from "./common-flags";
import { messageJson } from "../output";

const TCTL_NOTE = "Flag names may use underscores, as in tctl: --frontend_address, --enable_connection false.";

/**
 * `upsert` (tern spelling) or `upsert-remote-cluster` (tctl's): connects this cluster to
 * the one at --frontend-address, or updates that connection.
 */
export function upsertRemoteClusterCommand(name: string): LeafCommand {
  return {
    kind: "leaf",
    name,
    summary: "Connect this cluster to a remote cluster, or enable/disable that connection",
    details: [
      "The server asks the remote for its name, id, failover versions and shard count, checks",
      "that the two can replicate (same failoverVersionIncrement, distinct initialFailoverVersion,",
      "compatible shard counts, global namespaces enabled) and stores the connection.",
      "Run it on both clusters: each one pulls from the clusters it knows.",
      TCTL_NOTE,
      'With -o json, prints the AddOrUpdateRemoteClusterResponse { "cluster": ClusterInfo }.',
      "",
      "Examples:",
      '  tern --address 127.0.0.1:7233 operator cluster upsert --frontend-address localhost:8233',
      '  tern -address 127.0.0.1:7233 admin cluster upsert-remote-cluster --frontend_address "localhost:8233" --enable_connection false',
    ].join("\n"),
    flags: [
      { name: "frontend-address", kind: "string", valueName: "HOST:PORT", description: "Frontend address of the remote cluster (required)" },
      { name: "enable-connection", kind: "boolean", description: "Replicate over this connection (default true); =false keeps it but pauses replication" },
    ],
    async run(ctx, args) {
      const frontendAddress = requireString(args, "frontend-address");
      const enable = hasFlag(args, "enable-connection") ? getBoolean(args, "enable-connection") : undefined;
      const res = await ctx.operator().addOrUpdateRemoteCluster(
        { frontendAddress, enableRemoteClusterConnection: enable },
        { signal: ctx.signal },
      );
      if (ctx.format === "json") return ctx.out(messageJson(AddOrUpdateRemoteClusterResponseSchema, res));
      if (res.cluster) ctx.out(upsertSummary(res.cluster));
    },
  };
}

/**
 * `remove` (tern spelling, --name) or `remove-remote-cluster` (tctl's, --cluster):
 * forgets a remote cluster and its replication positions.
 */
export function removeRemoteClusterCommand(name: string, flag: "name" | "cluster"): LeafCommand {
  return {
    kind: "leaf",
    name,
    summary: "Disconnect a remote cluster (refused while a namespace still lists it)",
    details: [
      "Removes the remote from this cluster only; run it on the other cluster too.",
      "Refused while a global namespace lists both clusters: take the remote out of its clusters",
      "first, on its active cluster ('tern operator namespace update -n NS --cluster ...', naming",
      "the clusters it keeps).",
      "With -o json, prints {}.",
    ].join("\n"),
    positionals: "[CLUSTER]",
    maxPositionals: 1,
    flags: [{ name: flag, kind: "string", valueName: "NAME", description: "Name of the remote cluster (or give it as the argument)" }],
    async run(ctx, args) {
      const clusterName = flagOrPositional(args, flag, "cluster");
      if (!clusterName) throw new UsageError(`--${flag} is required (or give the cluster as the argument)`);
      await ctx.operator().removeRemoteCluster({ clusterName }, { signal: ctx.signal });
      ctx.out(ctx.format === "json" ? "{}\n" : `Removed remote cluster ${clusterName}\n`);
    },
  };
}
