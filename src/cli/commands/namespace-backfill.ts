import { GetBackfillStatusResponseSchema, StartBackfillResponseSchema, type GetBackfillStatusResponse, type StartBackfillResponse } from "../../gen/tern/admin/v1/backfill_pb";
import { getBoolean, getString } from "../args";
import type { CommandContext, LeafCommand } from "../command";
import { formatTable, formatTime, messageJson } from "../output";
import { namespaceArg, namespaceFlag } from "./common-flags";

/** One row per source cluster: status, progress, times. */
export function backfillTable(res: GetBackfillStatusResponse): string {
  if (res.jobs.length === 0) return `Namespace ${res.namespace}: no backfill into this cluster (its executions were written here or came by replication)\n`;
  const rows = res.jobs.map((j) => [
    j.sourceCluster,
    j.status,
    `${j.done}/${j.total}`,
    formatTime(j.startedTime),
    formatTime(j.updatedTime),
    j.lastError,
  ]);
  return formatTable(["SOURCE", "STATUS", "DONE/TOTAL", "STARTED", "UPDATED", "LAST ERROR"], rows);
}

/**
 * Backfill lines for `namespace describe`, with why a job waits or ended so (its LAST ERROR: a
 * paused, FAILED or STOPPED job read as one at work); empty when there is none or the server cannot tell.
 */
export async function backfillLines(ctx: CommandContext, namespace: string): Promise<string> {
  try {
    const res = await ctx.backfill().getBackfillStatus({ namespace }, { signal: ctx.signal });
    return res.jobs.map((j) => `Backfill from ${j.sourceCluster}: ${j.status} ${j.done}/${j.total}${j.lastError ? ` (${j.lastError})` : ""}\n`).join("");
  } catch {
    return "";
  }
}

/** `tern operator namespace backfill-status`: progress of bringing pre-existing executions here. */
export const backfillStatusCommand: LeafCommand = {
  kind: "leaf",
  name: "backfill-status",
  summary: "Show the backfill of a namespace's existing executions into this cluster",
  details: [
    "When this cluster is added to a global namespace, executions that existed before are",
    "copied from the active cluster by a backfill job; this shows each job (per source",
    "cluster) with its status (RUNNING, DONE, FAILED, STOPPED: this cluster was taken out of the",
    "namespace, or its source removed here), runs done/total and times.",
    'With -o json, prints the GetBackfillStatusResponse { "namespace", "namespaceId", "jobs" }.',
  ].join("\n"),
  positionals: "[NAMESPACE]",
  maxPositionals: 1,
  flags: [namespaceFlag],
  async run(ctx, args) {
    const namespace = namespaceArg(args);
    const res = await ctx.backfill().getBackfillStatus({ namespace }, { signal: ctx.signal });
    ctx.out(ctx.format === "json" ? messageJson(GetBackfillStatusResponseSchema, res) : backfillTable(res));
  },
};

/** What a start answers: started, or started again, from what. */
function startedLine(res: StartBackfillResponse): string {
  const was = res.replaced && ` again from the beginning (it was ${res.replaced.status} at ${res.replaced.done}/${res.replaced.total} runs)`;
  return `Backfill of namespace ${res.namespace} from ${res.sourceCluster} started${was ?? ""}\n`;
}

/** `tern operator namespace backfill`: starts copying a namespace's existing executions here. */
export const backfillStartCommand: LeafCommand = {
  kind: "leaf",
  name: "backfill",
  summary: "Copy a namespace's existing executions from another cluster to this one",
  details: [
    "Starts a backfill job on this cluster that copies every execution of the namespace, open",
    "and closed, from the source cluster (the namespace's active cluster unless --from names",
    "another), from the beginning. Joining a namespace starts one by itself; use this for a",
    "cluster that joined before that, or to redo a FAILED job. Safe to repeat: executions",
    "already here are skipped. A job that is RUNNING goes on and is not started again (refused,",
    "saying how far it is) unless --restart, which starts it from the beginning, its progress",
    "lost. Follow it with backfill-status.",
  ].join("\n"),
  positionals: "[NAMESPACE]",
  maxPositionals: 1,
  flags: [
    namespaceFlag,
    { name: "from", kind: "string", valueName: "CLUSTER", description: "Source cluster (default: the active cluster)" },
    { name: "restart", kind: "boolean", description: "Start a RUNNING job again from the beginning, its progress lost" },
  ],
  async run(ctx, args) {
    const namespace = namespaceArg(args);
    const req = { namespace, sourceCluster: getString(args, "from") ?? "", restart: getBoolean(args, "restart") };
    const res = await ctx.backfill().startBackfill(req, { signal: ctx.signal });
    ctx.out(ctx.format === "json" ? messageJson(StartBackfillResponseSchema, res) : startedLine(res));
  },
};
