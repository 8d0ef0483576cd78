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

/** Where a page's behind check stopped: the differences still undecided, and each side's token for its prefixes of them. */
export interface BehindPending {
  diffs: Diff[];
  tokens: { local: Uint8Array; remote: Uint8Array };
}

/**
 * Of the diverging runs, those whose shorter history is the start of the longer one (behind):
 * the longer side's checksum over the shorter side's event count (asked of that side) equals
 * the shorter's. Past `until`, between calls, it stops: the runs it has not decided yet are
 * pending, with each side's token to take up their prefixes with (from `resume` next time).
 */
export async function behindOf(
  diverging: Diff[],
  fetchFrom: { local: PrefixFetch; remote: PrefixFetch },
  { until = Infinity, resume }: { until?: number; resume?: BehindPending["tokens"] } = {},
): Promise<{ behind: Diff[]; diverging: Diff[]; pending?: BehindPending }> {
  const shorterOf = (d: Diff) => (d.local!.eventCount < d.remote!.eventCount ? "local" : "remote");
  const askOf = (longer: "local" | "remote") =>
    diverging.filter((d) => d.local!.eventCount !== d.remote!.eventCount && shorterOf(d) !== longer)
      .map((d): Prefix => ({ workflowId: d.workflowId, runId: d.runId, eventCount: d[shorterOf(d)]!.eventCount }));
  const [ofLocal, ofRemote] = await Promise.all([
    inChunks(askOf("local"), fetchFrom.local, until, resume?.local),
    inChunks(askOf("remote"), fetchFrom.remote, until, resume?.remote),
  ]);
  const out: { behind: Diff[]; diverging: Diff[]; pending?: BehindPending } = { behind: [], diverging: [] };
  const undecided: Diff[] = [];
  for (const d of diverging) {
    if (d.local!.eventCount === d.remote!.eventCount) {
      out.diverging.push(d);
      continue;
    }
    const shorter = d[shorterOf(d)]!;
    const of = shorterOf(d) === "remote" ? ofLocal : ofRemote;
    const prefix = of.answers.get(keyOf(d));
    if (prefix) out[prefix.eventCount === shorter.eventCount && prefix.checksum === shorter.checksum ? "behind" : "diverging"].push(d);
    else if (of.unasked.has(keyOf(d))) undecided.push(d);
    // Asked, and no prefix came: the longer side holds none of its events up to there.
    else out.diverging.push(d);
  }
  if (undecided.length) out.pending = { diffs: undecided, tokens: { local: ofLocal.token, remote: ofRemote.token } };
  return out;
}

/**
 * The prefix checksums of runs, MAX_PREFIXES a call, by "workflowId/runId"; `unasked`: the runs
 * of the chunks not finished by `until` (checked between calls), `token` to take the first of
 * those chunks up with. A side answers a chunk over several calls when digesting it takes longer
 * than a page's work (each call's token carries how far it got). A peer from before prefixes
 * answers a page of the namespace instead, whose runs were not asked for or are longer than
 * asked: its token is not followed (it would walk the whole namespace) and those runs stay
 * diverging.
 */
async function inChunks(runs: Prefix[], fetch: PrefixFetch, until: number, resume: Uint8Array = new Uint8Array(0)) {
  const answers = new Map<string, ExecutionChecksum>();
  let token = resume;
  let calls = 0;
  for (let i = 0; i < runs.length; i += MAX_PREFIXES) {
    const chunk = runs.slice(i, i + MAX_PREFIXES);
    const asked = new Map(chunk.map((p) => [keyOf(p), p.eventCount]));
    do {
      if (calls > 0 && Date.now() >= until) {
        // Out of time: this chunk's runs not answered yet, and the chunks after it, wait.
        const unasked = new Set(runs.slice(i).map(keyOf).filter((k) => !answers.has(k)));
        return { answers, unasked, token };
      }
      const res = await fetch(chunk, token);
      calls++;
      for (const x of res.executions) answers.set(keyOf(x), x);
      const prefixes = res.executions.every((x) => x.eventCount <= (asked.get(keyOf(x)) ?? -1n));
      token = prefixes ? new Uint8Array(res.nextPageToken) : new Uint8Array(0);
    } while (token.length);
  }
  return { answers, unasked: new Set<string>(), token: new Uint8Array(0) };
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
