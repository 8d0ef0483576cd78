import { create } from "@bufbuild/protobuf";
import { ExecutionChecksumSchema, type ExecutionChecksum, type ExecutionDifference, type GetExecutionChecksumsResponse } from "../src/gen/tern/admin/v1/service_pb";
import { keyOf, type RunChecksum } from "./verify-page";

export type Diff = Omit<ExecutionDifference, "$typeName">;
/** A run and how many of its first events a prefix checksum covers. */
export type Prefix = Pick<ExecutionChecksum, "workflowId" | "runId" | "eventCount">;

/** Most runs one GetExecutionChecksums call takes prefixes of. */
export const MAX_PREFIXES = 1000;

/** One call for prefixes: the chunk asked for, and the token of the call before (empty at first). */
export type PrefixFetch = (chunk: Prefix[], token: Uint8Array) => Promise<Pick<GetExecutionChecksumsResponse, "executions" | "nextPageToken">>;

/**
 * The diverging runs whose shorter history is the start of the longer one: the longer side's
 * checksum over the shorter side's event count (asked of that side) equals the shorter's.
 */
export async function behindOf(diverging: Diff[], fetchFrom: { local: PrefixFetch; remote: PrefixFetch }): Promise<Diff[]> {
  const shorterOf = (d: Diff) => (d.local!.eventCount < d.remote!.eventCount ? "local" : "remote");
  const askOf = (longer: "local" | "remote") =>
    diverging.filter((d) => d.local!.eventCount !== d.remote!.eventCount && shorterOf(d) !== longer)
      .map((d): Prefix => ({ workflowId: d.workflowId, runId: d.runId, eventCount: d[shorterOf(d)]!.eventCount }));
  const [ofLocal, ofRemote] = await Promise.all([inChunks(askOf("local"), fetchFrom.local), inChunks(askOf("remote"), fetchFrom.remote)]);
  return diverging.filter((d) => {
    if (d.local!.eventCount === d.remote!.eventCount) return false;
    const shorter = d[shorterOf(d)]!;
    const prefix = (shorterOf(d) === "remote" ? ofLocal : ofRemote).get(keyOf(d));
    return prefix !== undefined && prefix.eventCount === shorter.eventCount && prefix.checksum === shorter.checksum;
  });
}

/**
 * The prefix checksums of runs, MAX_PREFIXES a call, by "workflowId/runId". A side answers a
 * chunk over several calls when digesting it takes longer than a page's work (each call's token
 * carries how far it got). A peer from before prefixes answers a page of the namespace instead,
 * whose runs were not asked for or are longer than asked: its token is not followed (it would
 * walk the whole namespace) and those runs stay diverging.
 */
async function inChunks(runs: Prefix[], fetch: PrefixFetch): Promise<Map<string, ExecutionChecksum>> {
  const all = new Map<string, ExecutionChecksum>();
  for (let i = 0; i < runs.length; i += MAX_PREFIXES) {
    const chunk = runs.slice(i, i + MAX_PREFIXES);
    const asked = new Map(chunk.map((p) => [keyOf(p), p.eventCount]));
    let token = new Uint8Array(0);
    do {
      const res = await fetch(chunk, token);
      for (const x of res.executions) all.set(keyOf(x), x);
      const prefixes = res.executions.every((x) => x.eventCount <= (asked.get(keyOf(x)) ?? -1n));
      token = prefixes ? new Uint8Array(res.nextPageToken) : new Uint8Array(0);
    } while (token.length);
  }
  return all;
}

/** Missing (local only), extra (remote only) and diverging executions. */
export function compareChecksums(local: Map<string, RunChecksum>, remote: Map<string, RunChecksum>) {
  const missing: Diff[] = [];
  const extra: Diff[] = [];
  const diverging: Diff[] = [];
  const diff = (x: RunChecksum, l?: RunChecksum, r?: RunChecksum): Diff => ({
    workflowId: x.workflowId, runId: x.runId, local: l && create(ExecutionChecksumSchema, l), remote: r && create(ExecutionChecksumSchema, r),
  });
  for (const [k, l] of local) {
    const r = remote.get(k);
    if (!r) missing.push(diff(l, l));
    else if (r.eventCount !== l.eventCount || r.checksum !== l.checksum) diverging.push(diff(l, l, r));
  }
  for (const [k, r] of remote) if (!local.has(k)) extra.push(diff(r, undefined, r));
  return { missing, extra, diverging };
}
