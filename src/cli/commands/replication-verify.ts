import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { VerifyReplicationResponseSchema, type ExecutionDifference, type VerifyReplicationResponse } from "../../gen/tern/admin/v1/service_pb";
import { ORDER_DIFFERS } from "../../../replication/verify-page";
import { requireString } from "../args";
import type { LeafCommand } from "../command";
import { formatTable, messageJson } from "../output";

function diffRow(kind: string, d: ExecutionDifference): string[] {
  const side = (c: ExecutionDifference["local"]) => (c ? `${c.eventCount} event${c.eventCount === 1n ? "" : "s"} ${c.checksum.slice(0, 12)}` : "absent");
  return [kind, d.workflowId, d.runId, side(d.local), side(d.remote)];
}

/** The verification report: a summary line, then one row per difference. */
export function verifyReport(res: VerifyReplicationResponse): string {
  const n = differences(res);
  const counts = `${res.missing.length} missing, ${res.extra.length} extra, ${res.diverging.length} diverging`;
  const head =
    `${res.clusterName}: ${res.localExecutions} executions, ${res.remoteCluster}: ${res.remoteExecutions} executions; ` +
    (n === 0 ? "histories are identical\n" : res.behind.length ? `${counts}, ${res.behind.length} behind (one history the start of the other's)\n` : `${counts}\n`);
  if (n === 0) return head;
  const rows = [
    ...res.missing.map((d) => diffRow("missing", d)),
    ...res.extra.map((d) => diffRow("extra", d)),
    ...res.diverging.map((d) => diffRow("diverging", d)),
    ...res.behind.map((d) => diffRow("behind", d)),
  ];
  return head + formatTable(["DIFFERENCE", "WORKFLOW ID", "RUN ID", res.clusterName || "LOCAL", res.remoteCluster || "REMOTE"], rows);
}

/** How many executions differ, in any way. */
const differences = (res: VerifyReplicationResponse) => res.missing.length + res.extra.length + res.diverging.length + res.behind.length;

/** `tern replication verify`. */
export const verifyCommand: LeafCommand = {
  kind: "leaf",
  name: "verify",
  summary: "Compare every execution's history of a namespace with a remote cluster",
  details: [
    "Compares event counts and a checksum over event ids, versions, types and attributes of",
    "every execution (closed runs included). missing: only on this cluster; extra: only on the",
    "remote; diverging: on both but different; behind: on both, one side's history the start of",
    "the other's (replication not caught up yet while writes go on; if it stays once replication",
    "has caught up, events were lost on the shorter side). Exits 1 on any difference, 0 when identical.",
    "With -o json, prints the VerifyReplicationResponse as protobuf JSON.",
  ].join("\n"),
  flags: [
    { name: "namespace", alias: "n", kind: "string", valueName: "NS", description: "Namespace to compare (required)" },
    { name: "cluster", kind: "string", valueName: "CLUSTER", description: "Remote cluster to compare with (required)" },
  ],
  async run(ctx, args) {
    const req = { namespace: requireString(args, "namespace"), cluster: requireString(args, "cluster"), pageSize: PAGE };
    const call = (more: { nextPageToken?: Uint8Array; pageSize?: number } = {}) =>
      ctx.admin().verifyReplication({ ...req, ...more }, { signal: ctx.signal, timeoutMs: ctx.deadlineMs(ctx.longRunMs) });
    let res: VerifyReplicationResponse;
    try {
      // Page after page, each call with its own deadline: a namespace of many runs takes longer
      // than any one wait. A server from before pages answers the whole namespace at once.
      res = await call();
      for (let token = res.nextPageToken; token.length; token = res.nextPageToken) res = addPage(res, await call({ nextPageToken: token }));
    } catch (e) {
      // The two clusters' databases order workflow ids differently (their collations): pages
      // cannot be lined up, and the whole namespace in one call still compares them, as before pages.
      if (!(e instanceof ConnectError && e.code === Code.FailedPrecondition && e.rawMessage.includes(ORDER_DIFFERS))) throw e;
      ctx.err(`NOTE: ${e.rawMessage.split(";")[0]}: verifying the whole namespace in one call instead\n`);
      res = await call({ pageSize: 0 });
    }
    // The whole verification, not a page of it.
    res = create(VerifyReplicationResponseSchema, { ...res, paged: false });
    ctx.out(ctx.format === "json" ? messageJson(VerifyReplicationResponseSchema, res) : verifyReport(res));
    return differences(res) ? 1 : 0;
  },
};

/** Runs of each side a verify page compares. */
const PAGE = 1000;

/**
 * The verification so far with the next page's counts and differences added; its token the next
 * page's. A whole namespace's answer (from a server of an older build sharing the cluster's
 * database, which ignores the page asked for) stands alone.
 */
function addPage(so: VerifyReplicationResponse, page: VerifyReplicationResponse): VerifyReplicationResponse {
  if (!page.paged) return page;
  return create(VerifyReplicationResponseSchema, {
    ...page,
    localExecutions: so.localExecutions + page.localExecutions,
    remoteExecutions: so.remoteExecutions + page.remoteExecutions,
    missing: [...so.missing, ...page.missing],
    extra: [...so.extra, ...page.extra],
    diverging: [...so.diverging, ...page.diverging],
    behind: [...so.behind, ...page.behind],
  });
}
