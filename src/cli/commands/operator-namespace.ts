import {
  DeleteNamespaceResponseSchema,
} from "../../gen/tern/operator/v1/service_pb";
import {
  DeprecateNamespaceResponseSchema,
  DescribeNamespaceResponseSchema,
  NamespaceDescriptionSchema,
  RegisterNamespaceResponseSchema,
  type UpdateNamespaceResponse,
  UpdateNamespaceResponseSchema,
} from "../../gen/tern/workflow/v1/namespace_pb";
import { type FlagSpec, getBoolean, getString, getStrings, parseKeyValues, type ParsedArgs } from "../args";
import type { CommandContext, GroupCommand, LeafCommand } from "../command";
import { parseDuration } from "../duration";
import { CliError, UsageError } from "../errors";
import { describeNamespace, failedOverLine, namespaceSummary, namespaceTable } from "../format-namespace";
import { listJson, messageJson } from "../output";
import { collectPages } from "../paging";
import { namespaceArg, namespaceFlag } from "./common-flags";
import { backfillLines, backfillStartCommand, backfillStatusCommand } from "./namespace-backfill";
import { failoverCommand } from "./namespace-failover";

const description: FlagSpec = { name: "description", kind: "string", valueName: "TEXT", description: "Description" };
const email: FlagSpec = { name: "email", kind: "string", valueName: "EMAIL", description: "Owner email" };
const retention: FlagSpec = {
  name: "retention",
  kind: "string",
  valueName: "DURATION",
  description: "Workflow execution retention, e.g. 72h or 3d",
};
const data: FlagSpec = {
  name: "data",
  kind: "string",
  repeated: true,
  valueName: "KEY=VALUE",
  description: "Namespace data entry",
};
const cluster: FlagSpec = {
  name: "cluster",
  kind: "string",
  repeated: true,
  valueName: "NAME",
  description: "Cluster that holds the global namespace",
};
const activeCluster: FlagSpec = {
  name: "active-cluster",
  kind: "string",
  valueName: "NAME",
  description: "Active cluster of the global namespace",
};

function retentionArg(args: ParsedArgs) {
  const text = getString(args, "retention");
  return text === undefined ? undefined : parseDuration(text, "retention");
}

const create: LeafCommand = {
  kind: "leaf",
  name: "create",
  summary: "Register a namespace",
  positionals: "[NAMESPACE]",
  maxPositionals: 1,
  flags: [
    namespaceFlag,
    { name: "global", kind: "boolean", description: "Register a global (replicated) namespace" },
    cluster,
    { ...activeCluster, description: "Active cluster (default: the cluster that answers)" },
    { ...retention, defaultText: "72h" },
    description,
    email,
    data,
  ],
  async run(ctx, args) {
    const namespace = namespaceArg(args);
    const isGlobal = getBoolean(args, "global");
    if (!isGlobal && (getStrings(args, "cluster").length > 0 || getString(args, "active-cluster"))) {
      throw new UsageError("--cluster and --active-cluster need --global");
    }
    const res = await ctx.workflow().registerNamespace(
      {
        namespace,
        description: getString(args, "description") ?? "",
        ownerEmail: getString(args, "email") ?? "",
        workflowExecutionRetentionPeriod: retentionArg(args),
        data: parseKeyValues(getStrings(args, "data"), "data"),
        isGlobalNamespace: isGlobal,
        clusters: getStrings(args, "cluster"),
        activeClusterName: getString(args, "active-cluster") ?? "",
      },
      { signal: ctx.signal },
    );
    if (ctx.format === "json") return ctx.out(messageJson(RegisterNamespaceResponseSchema, res));
    ctx.out(`Registered namespace ${namespace} (${namespaceSummary(res.namespace)})\n`);
  },
};

const describe: LeafCommand = {
  kind: "leaf",
  name: "describe",
  summary: "Describe a namespace",
  details: [
    "Shows the active cluster, failover version, replication state (Normal or Handover) and,",
    "for a global namespace, its latest failovers as `time from → to @version (forced)` or",
    "`(graceful)` (neither for one recorded before tern kept how it was made).",
    'With -o json, prints the DescribeNamespaceResponse { "namespace": NamespaceDescription }.',
  ].join("\n"),
  positionals: "[NAMESPACE]",
  maxPositionals: 1,
  flags: [namespaceFlag, { name: "namespace-id", kind: "string", valueName: "ID", description: "Namespace id (instead of the name)" }],
  async run(ctx, args) {
    const id = getString(args, "namespace-id") ?? "";
    const namespace = id && !getString(args, "namespace") && args.positionals.length === 0 ? "" : namespaceArg(args);
    const res = await ctx.workflow().describeNamespace({ namespace, id }, { signal: ctx.signal });
    if (ctx.format === "json") return ctx.out(messageJson(DescribeNamespaceResponseSchema, res));
    if (res.namespace) ctx.out(describeNamespace(res.namespace) + (res.namespace.isGlobalNamespace ? await backfillLines(ctx, res.namespace.namespaceInfo!.name) : ""));
  },
};

const list: LeafCommand = {
  kind: "leaf",
  name: "list",
  summary: "List all namespaces",
  details: 'With -o json, prints { "namespaces": [NamespaceDescription, ...] } with every page merged.',
  flags: [],
  async run(ctx) {
    const items = await collectPages(async (nextPageToken) => {
      const res = await ctx.workflow().listNamespaces({ nextPageToken }, { signal: ctx.signal });
      return { items: res.namespaces, nextPageToken: res.nextPageToken };
    });
    ctx.out(ctx.format === "json" ? listJson("namespaces", NamespaceDescriptionSchema, items) : namespaceTable(items));
  },
};

/** The flags of `update` that change something: at least one is required. */
const updateFlags: FlagSpec[] = [
  description, email, retention, { ...data, description: "Data entry to merge (KEY= removes KEY)" }, cluster, activeCluster,
  { name: "promote-global", kind: "boolean", description: "Make a local namespace global (active on this cluster)" },
];

/** The update the flags ask for; a usage error when they ask for none. */
function updateRequest(namespace: string, args: ParsedArgs) {
  const allowUnfinishedBackfill = getBoolean(args, "allow-unfinished-backfill");
  if (allowUnfinishedBackfill && !getString(args, "active-cluster")) throw new UsageError("--allow-unfinished-backfill goes with --active-cluster (a forced failover)");
  const req = {
    namespace,
    description: getString(args, "description"),
    ownerEmail: getString(args, "email"),
    workflowExecutionRetentionPeriod: retentionArg(args),
    data: parseKeyValues(getStrings(args, "data"), "data"),
    clusters: getStrings(args, "cluster"),
    activeClusterName: getString(args, "active-cluster") ?? "",
    promoteNamespace: getBoolean(args, "promote-global"),
    allowUnfinishedBackfill,
  };
  // Sent anyway, the server changes nothing and "Updated namespace" would say otherwise.
  if (!asksOtherThanActive(req) && req.activeClusterName === "") throw new UsageError(`nothing to update: give at least one of ${updateFlags.map((f) => `--${f.name}`).join(", ")}`);
  return req;
}

/** Whether an update asks for a change besides --active-cluster. */
function asksOtherThanActive(req: ReturnType<typeof updateRequest>): boolean {
  return [req.description, req.ownerEmail, req.workflowExecutionRetentionPeriod].some((v) => v !== undefined) ||
    Object.keys(req.data).length > 0 || req.clusters.length > 0 || req.promoteNamespace;
}

/**
 * `Namespace orders is already active in clusterA: nothing changed` for an update that asked only
 * for the cluster active already (no failover, as Temporal makes none); undefined otherwise.
 */
function alreadyActiveLine(req: ReturnType<typeof updateRequest>, res: UpdateNamespaceResponse): string | undefined {
  const active = res.namespace?.replicationConfig?.activeClusterName;
  if (res.failedOver || asksOtherThanActive(req) || req.activeClusterName === "" || active !== req.activeClusterName) return undefined;
  return `Namespace ${req.namespace} is already active in ${active}: nothing changed (${namespaceSummary(res.namespace)})\n`;
}

const update: LeafCommand = {
  kind: "leaf",
  name: "update",
  summary: "Update a namespace; --active-cluster fails it over (forced)",
  details: [
    "--active-cluster switches the active cluster at once: a forced failover, with no handover",
    "and no wait for replication (for when the active cluster is down). While both clusters",
    "are up, prefer 'tern operator namespace failover --to NAME'. It is refused while the new",
    "active cluster has not finished backfilling the namespace (backfill-status there): it",
    "lacks the runs not brought yet. --allow-unfinished-backfill fails over anyway (their source",
    "gone for good).",
    "--promote-global makes a local namespace global, active here; then add clusters with",
    "--cluster: their copies get the existing executions by backfill.",
  ].join("\n"),
  positionals: "[NAMESPACE]",
  maxPositionals: 1,
  flags: [
    namespaceFlag, ...updateFlags,
    { name: "allow-unfinished-backfill", kind: "boolean", description: "With --active-cluster: fail over though that cluster has not finished backfilling the namespace" },
  ],
  async run(ctx, args) {
    const namespace = namespaceArg(args);
    const req = updateRequest(namespace, args);
    const res = await ctx.workflow().updateNamespace(req, { signal: ctx.signal });
    if (ctx.format === "json") return ctx.out(messageJson(UpdateNamespaceResponseSchema, res));
    const unchanged = alreadyActiveLine(req, res);
    if (unchanged) return ctx.out(unchanged);
    if (res.failedOver) return ctx.out(`${failedOverLine(namespace, res.namespace, "forced")}: ${namespaceSummary(res.namespace)}\n`);
    ctx.out(`Updated namespace ${namespace} (${namespaceSummary(res.namespace)})\n`);
  },
};

const deprecate: LeafCommand = {
  kind: "leaf",
  name: "deprecate",
  summary: "Deprecate a namespace (no new workflows can start)",
  positionals: "[NAMESPACE]",
  maxPositionals: 1,
  flags: [namespaceFlag],
  async run(ctx, args) {
    const namespace = namespaceArg(args);
    const res = await ctx.workflow().deprecateNamespace({ namespace }, { signal: ctx.signal });
    if (ctx.format === "json") return ctx.out(messageJson(DeprecateNamespaceResponseSchema, res));
    ctx.out(`Deprecated namespace ${namespace}\n`);
  },
};

async function confirmDelete(ctx: CommandContext, namespace: string): Promise<void> {
  if (!ctx.interactive) {
    throw new UsageError(`refusing to delete namespace ${namespace} without confirmation: pass --yes`);
  }
  const answer = await ctx.prompt(
    `Delete namespace ${namespace} and all its workflow executions? Type the namespace name to confirm: `,
  );
  if (answer.trim() !== namespace) throw new CliError("delete aborted: the name typed did not match");
}

const remove: LeafCommand = {
  kind: "leaf",
  name: "delete",
  summary: "Delete a namespace and all its workflow executions",
  positionals: "[NAMESPACE]",
  maxPositionals: 1,
  flags: [namespaceFlag, { name: "yes", alias: "y", kind: "boolean", description: "Do not ask for confirmation" }],
  async run(ctx, args) {
    const namespace = namespaceArg(args);
    if (!getBoolean(args, "yes")) await confirmDelete(ctx, namespace);
    // One transaction deletes every run and event of the namespace: minutes for a large one.
    const res = await ctx.operator().deleteNamespace({ namespace }, { signal: ctx.signal, timeoutMs: ctx.deadlineMs(ctx.longRunMs) });
    if (ctx.format === "json") return ctx.out(messageJson(DeleteNamespaceResponseSchema, res));
    ctx.out(`Deleted namespace ${res.deletedNamespace || namespace} (${res.deletedExecutions} workflow executions)\n`);
    if (res.unaskedClusters.length) ctx.err(unaskedNote(namespace, res.unaskedClusters));
  },
};

/**
 * A NOTE for a stale copy deleted while members of its namespace were not asked whether they hold
 * it at a later failover version (not connected to the cluster asked): the copy may have been
 * behind, not stale, and the operator learns whom to check.
 */
function unaskedNote(namespace: string, clusters: string[]): string {
  const names = clusters.map((c) => `cluster ${c}`).join(", ");
  return `NOTE: ${names}, listed in namespace ${namespace}'s clusters but not connected to the cluster asked, ${clusters.length === 1 ? "was" : "were"} not asked ` +
    `whether ${clusters.length === 1 ? "it holds" : "they hold"} ${namespace} at a later failover version; if one does, this copy was behind, not stale ` +
    `('tern operator namespace describe ${namespace}' there says where it is active)\n`;
}

/** `tern operator namespace ...`. */
export const operatorNamespaceCommand: GroupCommand = {
  kind: "group",
  name: "namespace",
  summary: "Register, describe, update, fail over and delete namespaces",
  commands: [create, describe, list, update, failoverCommand, backfillStartCommand, backfillStatusCommand, deprecate, remove],
};
