import {
  MergeReplicationDlqResponseSchema,
  PurgeReplicationDlqResponseSchema,
  ReplicationDlqEntrySchema,
  type ReplicationDlqEntry,
} from "../../gen/tern/admin/v1/service_pb";
import { getBoolean, getString, type ParsedArgs } from "../args";
import type { CommandContext, GroupCommand, LeafCommand } from "../command";
import { CliError, lostMidCall, UsageError } from "../errors";
import { formatTable, formatTime, listJson, messageJson } from "../output";
import { collectPages } from "../paging";
import { INT32_MAX, positiveIntArg } from "./common-flags";
import { LEFT_FOR_NEXT_MERGE } from "../../../replication/dlq-reasons";

const filterFlags = [
  { name: "source-cluster", kind: "string", valueName: "CLUSTER", description: "Only entries from this source cluster" },
  { name: "shard", kind: "string", valueName: "N", description: "Only entries from this shard of the source" },
] as const;

function filterOf(args: ParsedArgs): { sourceCluster: string; shardId: number } {
  return { sourceCluster: getString(args, "source-cluster") ?? "", shardId: positiveIntArg(args, "shard", INT32_MAX) ?? 0 };
}

/** "the replication DLQ" as filter narrows it: "the replication DLQ of clusterA shard 3". */
function dlqNamed({ sourceCluster, shardId }: { sourceCluster: string; shardId: number }): string {
  return `the replication DLQ${sourceCluster ? ` of ${sourceCluster}` : ""}${shardId ? ` shard ${shardId}` : ""}`;
}

/** "1 DLQ entry", "3 DLQ entries". */
const entriesCount = (n: bigint) => `${n} DLQ ${n === 1n ? "entry" : "entries"}`;

/**
 * The DLQ table: one row per entry, its LAST ERROR the stored error's first line, the reason
 * (an entry stored by an older build carries the failed statement after it: -o json has it
 * whole); filter names what is empty.
 */
export function dlqTable(entries: readonly ReplicationDlqEntry[], filter = { sourceCluster: "", shardId: 0 }): string {
  if (entries.length === 0) {
    const named = dlqNamed(filter);
    return `${named.charAt(0).toUpperCase()}${named.slice(1)} is empty\n`;
  }
  const headers = ["SOURCE", "SHARD", "TASK ID", "WORKFLOW ID", "RUN ID", "EVENTS", "ATTEMPTS", "CREATED", "LAST ERROR"];
  return formatTable(
    headers,
    entries.map((e) => [
      e.sourceCluster, String(e.shardId), String(e.taskId), e.workflowId, e.runId, `[${e.firstEventId}, ${e.nextEventId})`,
      String(e.attempts), formatTime(e.createTime), e.lastError.split("\n")[0]!,
    ]),
  );
}

const list: LeafCommand = {
  kind: "leaf",
  name: "list",
  summary: "List history replication tasks held in this cluster's DLQ",
  details: "With -o json, prints { \"entries\": [ReplicationDlqEntry...] } as protobuf JSON.",
  flags: [...filterFlags],
  async run(ctx, args) {
    const filter = filterOf(args);
    const entries = await collectPages(async (nextPageToken) => {
      const res = await ctx.admin().listReplicationDlq({ ...filter, pageSize: 500, nextPageToken }, { signal: ctx.signal });
      return { items: res.entries, nextPageToken: res.nextPageToken };
    });
    ctx.out(ctx.format === "json" ? listJson("entries", ReplicationDlqEntrySchema, entries) : dlqTable(entries, filter));
  },
};

const merge: LeafCommand = {
  kind: "leaf",
  name: "merge",
  summary: "Re-fetch DLQ entries from their source and apply them; entries that still fail stay",
  details: "Exits 1 when some entries still fail (they are listed with this attempt's error).",
  flags: [...filterFlags],
  async run(ctx, args) {
    const res = await ctx.admin().mergeReplicationDlq(filterOf(args), { signal: ctx.signal, timeoutMs: ctx.deadlineMs(ctx.longRunMs) }).catch((e: unknown) => {
      throw mergeCutShort(e, ctx.address);
    });
    if (ctx.format === "json") ctx.out(messageJson(MergeReplicationDlqResponseSchema, res));
    else {
      ctx.out(mergeSummary(res.merged, res.failed));
      if (res.failed.length) ctx.out(dlqTable(res.failed));
    }
    return res.failed.length ? 1 : 0;
  },
};

/**
 * The merge's first line. Entries that reached the DLQ after the merge's last listing did not
 * fail: they are counted apart, with what to do. Before, "N still fail" counted them as failures,
 * and only the end of each row's LAST ERROR (past 200 columns) said to merge again.
 */
function mergeSummary(merged: bigint, failed: readonly ReplicationDlqEntry[]): string {
  const left = failed.filter((e) => e.lastError === LEFT_FOR_NEXT_MERGE).length;
  const summary = `Merged ${entriesCount(merged)}; ${failed.length - left} still fail`;
  if (!left) return `${summary}\n`;
  return (
    `${summary}; ${entriesCount(BigInt(left))} left in the DLQ, not merged (they reached it after this merge's last listing, their runs' tasks still coming; ` +
    `those runs stay held): run 'tern replication dlq merge' again\n`
  );
}

/**
 * A merge whose connection was cut once the server had it (the server killed or restarted while
 * it ran) may have merged entries: "cannot reach tern" alone read as nothing done. Each entry
 * is merged in the transaction that deletes it, so says what stands. Any other failure is left as it is.
 */
function mergeCutShort(e: unknown, address: string): unknown {
  const reason = lostMidCall(e);
  if (!reason) return e;
  return new CliError(
    `the connection to tern at ${address} was lost during the DLQ merge (${reason}): entries merged so far stay merged (each leaves the DLQ in the transaction that applies it); ` +
      "run 'tern replication dlq merge' again once tern is back to merge the rest ('tern replication dlq list' shows what is left)",
  );
}

async function confirmPurge(ctx: CommandContext, what: string): Promise<void> {
  if (!ctx.interactive) throw new UsageError(`refusing to purge ${what} without confirmation: pass --yes`);
  const answer = await ctx.prompt(`Delete ${what} without applying it? Type "purge" to confirm: `);
  if (answer.trim() !== "purge") throw new UsageError("purge aborted: confirmation did not match");
}

const purge: LeafCommand = {
  kind: "leaf",
  name: "purge",
  summary: "Delete DLQ entries without applying them",
  flags: [...filterFlags, { name: "yes", alias: "y", kind: "boolean", description: "Do not ask for confirmation" }],
  async run(ctx, args) {
    const filter = filterOf(args);
    const what = dlqNamed(filter);
    if (!getBoolean(args, "yes")) await confirmPurge(ctx, what);
    const res = await ctx.admin().purgeReplicationDlq(filter, { signal: ctx.signal, timeoutMs: ctx.deadlineMs(ctx.longRunMs) });
    ctx.out(ctx.format === "json" ? messageJson(PurgeReplicationDlqResponseSchema, res) : `Purged ${entriesCount(res.purged)}\n`);
  },
};

/** `tern replication dlq ...`. */
export const dlqCommand: GroupCommand = {
  kind: "group",
  name: "dlq",
  summary: "List, merge and purge the replication DLQ",
  commands: [list, merge, purge],
};
