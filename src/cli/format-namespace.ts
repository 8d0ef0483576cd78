import {
  type FailoverStatus,
  NamespaceState,
  type NamespaceDescription,
  ReplicationState,
} from "../gen/tern/workflow/v1/namespace_pb";
import { timestampMs } from "@bufbuild/protobuf/wkt";
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
  if (!ns.isGlobalNamespace) return formatKeyValues(entries);
  entries.push(["FailoverHistory", ns.failoverHistory.length === 0 ? "(none)" : ""]);
  return formatKeyValues(entries) + failoverHistoryLines(ns.failoverHistory);
}

/** How many failovers describe shows; older ones are counted, not listed. */
const FAILOVERS_SHOWN = 5;

/** The latest failovers, newest first, one indented line each: `  <time>  clusterA → clusterB @101`. */
export function failoverHistoryLines(history: readonly FailoverStatus[]): string {
  const millis = (f: FailoverStatus) => (f.failoverTime ? timestampMs(f.failoverTime) : 0);
  const newestFirst = [...history].sort((x, y) => millis(y) - millis(x));
  const shown = newestFirst.slice(0, FAILOVERS_SHOWN);
  const lines = shown.map((f) => `  ${formatTime(f.failoverTime)}  ${f.fromCluster || "?"} → ${f.toCluster} @${f.failoverVersion}${howLabel(f)}\n`);
  const earlier = history.length - shown.length;
  return lines.join("") + (earlier > 0 ? `  (${earlier} earlier)\n` : "");
}

/** ` (forced)` or ` (graceful)`; nothing for an entry recorded before tern kept how (or by a server from before). */
function howLabel(f: FailoverStatus): string {
  if (f.forced === undefined) return "";
  return f.forced ? " (forced)" : " (graceful)";
}

/**
 * What a failover says first, forced (update --active-cluster) or graceful (failover --to), as
 * the failover history tells them apart: `Failed over namespace orders from clusterA to clusterB (forced)`.
 */
export function failedOverLine(name: string, ns: NamespaceDescription | undefined, how: "forced" | "graceful"): string {
  const to = ns?.replicationConfig?.activeClusterName ?? "";
  const from = ns?.failoverHistory.find((f) => f.failoverVersion === ns.failoverVersion)?.fromCluster;
  return `Failed over namespace ${name}${from ? ` from ${from}` : ""} to ${to} (${how})`;
}

/**
 * The namespace list table: NAME, ID, STATE, GLOBAL, ACTIVE, CLUSTERS, FAILOVER VERSION. GLOBAL
 * reads true or false, as describe's IsGlobalNamespace, -o json's isGlobalNamespace and the
 * cluster list's booleans do.
 */
export function namespaceTable(list: readonly NamespaceDescription[]): string {
  const headers = ["NAME", "ID", "STATE", "GLOBAL", "ACTIVE", "CLUSTERS", "FAILOVER VERSION"];
  const rows = list.map((ns) => [
    ns.namespaceInfo?.name ?? "",
    ns.namespaceInfo?.id ?? "",
    enumLabel(NamespaceState, ns.namespaceInfo?.state ?? 0),
    String(ns.isGlobalNamespace),
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
