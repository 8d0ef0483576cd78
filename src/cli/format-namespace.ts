import { NamespaceState, type NamespaceDescription, ReplicationState } from "../gen/tern/workflow/v1/namespace_pb";
import { formatDuration } from "./duration";
import { enumLabel, formatKeyValues, formatTable, formatTime } from "./output";

/** `key: value` lines describing one namespace. */
export function describeNamespace(ns: NamespaceDescription): string {
  const info = ns.namespaceInfo;
  const repl = ns.replicationConfig;
  const data = Object.entries(info?.data ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
  const entries: [string, string | undefined][] = [
    ["Name", info?.name ?? ""],
    ["Id", info?.id ?? ""],
    ["State", enumLabel(NamespaceState, info?.state ?? 0)],
    ["Description", info?.description ?? ""],
    ["OwnerEmail", info?.ownerEmail ?? ""],
    ["Data", data],
    ["Retention", formatDuration(ns.config?.workflowExecutionRetentionTtl)],
    ["IsGlobalNamespace", String(ns.isGlobalNamespace)],
    ["ActiveClusterName", repl?.activeClusterName ?? ""],
    ["Clusters", (repl?.clusters ?? []).join(", ")],
    ["ReplicationState", enumLabel(ReplicationState, repl?.state ?? 0)],
    ["FailoverVersion", String(ns.failoverVersion)],
    ["ConfigVersion", String(ns.configVersion)],
    ["CreateTime", formatTime(ns.createTime)],
    ["UpdateTime", formatTime(ns.updateTime)],
  ];
  ns.failoverHistory.forEach((f, i) => {
    const when = formatTime(f.failoverTime);
    entries.push([`FailoverHistory[${i}]`, `${when} ${f.fromCluster} -> ${f.toCluster} (version ${f.failoverVersion})`]);
  });
  return formatKeyValues(entries);
}

/** The namespace list table: NAME, ID, STATE, GLOBAL, ACTIVE, CLUSTERS, FAILOVER VERSION. */
export function namespaceTable(list: readonly NamespaceDescription[]): string {
  const headers = ["NAME", "ID", "STATE", "GLOBAL", "ACTIVE", "CLUSTERS", "FAILOVER VERSION"];
  const rows = list.map((ns) => [
    ns.namespaceInfo?.name ?? "",
    ns.namespaceInfo?.id ?? "",
    enumLabel(NamespaceState, ns.namespaceInfo?.state ?? 0),
    ns.isGlobalNamespace ? "yes" : "no",
    ns.replicationConfig?.activeClusterName ?? "",
    (ns.replicationConfig?.clusters ?? []).join(","),
    String(ns.failoverVersion),
  ]);
  return formatTable(headers, rows);
}

/** One line summing up where a namespace is active, for create/update output. */
export function namespaceSummary(ns: NamespaceDescription | undefined): string {
  if (!ns) return "";
  if (!ns.isGlobalNamespace) return "local";
  const repl = ns.replicationConfig;
  return [
    "global",
    `active: ${repl?.activeClusterName ?? ""}`,
    `clusters: ${(repl?.clusters ?? []).join(", ")}`,
    `failover version: ${ns.failoverVersion}`,
    `config version: ${ns.configVersion}`,
  ].join("; ");
}
