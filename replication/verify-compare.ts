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
 * Where a side's prefix calls stopped: the token of the chunk of prefixes it was in and how many
 * of that chunk's runs are still to answer (0: between chunks). The chunk asked again must be
 * those runs only: the token resumes past the last prefix answered, in the peer's order.
 */
export interface PrefixResume {
  token: Uint8Array;
  first: number;
}

/** Where a page's behind check stopped: the differences still undecided (each side's unfinished chunk's first), and where each side's prefixes stopped. */
export interface BehindPending {
  diffs: Diff[];
  resume: { local: PrefixResume; remote: PrefixResume };
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
  { until = Infinity, resume }: { until?: number; resume?: BehindPending["resume"] } = {},
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
  for (const d of diverging) {
    if (d.local!.eventCount === d.remote!.eventCount) {
      out.diverging.push(d);
      continue;
    }
    const shorter = d[shorterOf(d)]!;
    const of = shorterOf(d) === "remote" ? ofLocal : ofRemote;
    const prefix = of.answers.get(keyOf(d));
    if (prefix) out[prefix.eventCount === shorter.eventCount && prefix.checksum === shorter.checksum ? "behind" : "diverging"].push(d);
    // Asked, and no prefix came: the longer side holds none of its events up to there.
    else if (!of.unasked.includes(keyOf(d))) out.diverging.push(d);
  }
  // In each side's order of asking, so the side's first chunk next time is its unfinished one.
  const byKey = new Map(diverging.map((d) => [keyOf(d), d]));
  const undecided = [...ofRemote.unasked, ...ofLocal.unasked].map((k) => byKey.get(k)!);
  if (undecided.length) out.pending = { diffs: undecided, resume: { local: ofLocal.resume, remote: ofRemote.resume } };
  return out;
}

/**
 * The prefix checksums of runs, MAX_PREFIXES a call (the first chunk as `resume` says), by
 * "workflowId/runId"; `unasked`: the runs of the chunks not finished by `until` (checked between
 * calls), in order, and where to resume them. A side answers a chunk over several calls when
 * digesting it takes longer than a page's work (each call's token carries how far it got). A
 * peer from before prefixes answers a page of the namespace instead, whose runs were not asked
 * for or are longer than asked: its token is not followed (it would walk the whole namespace)
 * and those runs stay diverging.
 */
async function inChunks(runs: Prefix[], fetch: PrefixFetch, until: number, resume: PrefixResume = { token: new Uint8Array(0), first: 0 }) {
  const answers = new Map<string, ExecutionChecksum>();
  let token = resume.token;
  let calls = 0;
  for (let i = 0, size = resume.first || MAX_PREFIXES; i < runs.length; i += size, size = MAX_PREFIXES) {
    const chunk = runs.slice(i, i + size);
    const asked = new Map(chunk.map((p) => [keyOf(p), p.eventCount]));
    do {
      if (calls > 0 && Date.now() >= until) {
        // Out of time: this chunk's runs not answered yet, and the chunks after it, wait.
        const left = chunk.map(keyOf).filter((k) => !answers.has(k));
        const unasked = [...left, ...runs.slice(i + size).map(keyOf)];
        return { answers, unasked, resume: { token, first: token.length ? left.length : 0 } };
      }
      const res = await fetch(chunk, token);
      calls++;
      for (const x of res.executions) answers.set(keyOf(x), x);
      const prefixes = res.executions.every((x) => x.eventCount <= (asked.get(keyOf(x)) ?? -1n));
      token = prefixes ? new Uint8Array(res.nextPageToken) : new Uint8Array(0);
    } while (token.length);
  }
  return { answers, unasked: [] as string[], resume: { token: new Uint8Array(0), first: 0 } };
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
