import { z } from "zod";
import { base64Decode, base64Encode } from "@bufbuild/protobuf/wire";
import { create } from "@bufbuild/protobuf";
import { failedPrecondition } from "../src/errors";
import { ExecutionChecksumSchema, type ExecutionChecksum } from "../src/gen/tern/admin/v1/service_pb";
import type { BehindPending, Diff } from "./verify-compare";

/** What a page that cannot line the two sides' runs up says (the CLI then verifies in one call). */
export const ORDER_DIFFERS = "checksums come in another order than this cluster's";

/** A run's checksum as the pages of both sides give it. */
export type RunChecksum = Pick<ExecutionChecksum, "workflowId" | "runId" | "eventCount" | "checksum">;

/** A run's key: workflow id and run id. */
type RunKey = Pick<ExecutionChecksum, "workflowId" | "runId">;

export const keyOf = (x: RunKey) => `${x.workflowId}\u0000${x.runId}`;

/** An event count in a token. */
const COUNT = z.string().regex(/^\d{1,19}$/);

/**
 * VerifyReplication's page token: each side's GetExecutionChecksums token (base64; null once
 * its walk is done), the last run compared (the frontier), and the runs one side's pages gave
 * past it (the other side's pages have not reached them yet): at most one page of one side.
 */
export const VerifyToken = z.object({
  l: z.string().nullable(),
  r: z.string().nullable(),
  f: z.tuple([z.string(), z.string()]).optional(),
  c: z.object({
    side: z.enum(["local", "remote"]),
    runs: z.array(z.tuple([z.string(), z.string(), COUNT, z.string()])).max(5000),
  }).optional(),
  /** The runs a page's behind check left undecided ([workflow id, run id, local count and checksum, remote's]), and each side's prefix token. */
  b: z.object({
    d: z.array(z.tuple([z.string(), z.string(), COUNT, z.string(), COUNT, z.string()])).min(1).max(10_000),
    l: z.string(),
    r: z.string(),
    /** How many runs each side's unfinished chunk has left. */
    ln: z.number().int().nonnegative(),
    rn: z.number().int().nonnegative(),
  }).optional(),
});
export type VerifyToken = z.infer<typeof VerifyToken>;

/** The walks' state before the first page. */
export const FIRST_PAGE: VerifyToken = { l: "", r: "" };

/** The walks' state once both are done. */
export const WALKS_DONE: VerifyToken = { l: null, r: null };

/** A token's walks, without its undecided runs: undefined once both walks are done. */
export const walkOf = ({ b: _, ...walk }: VerifyToken): VerifyToken | undefined => (walk.l === null && walk.r === null ? undefined : walk);

/** An undecided difference from its place in the token. */
export function diffOf([workflowId, runId, ln, lc, rn, rc]: NonNullable<VerifyToken["b"]>["d"][number]): Diff {
  return { workflowId, runId, local: create(ExecutionChecksumSchema, { workflowId, runId, eventCount: BigInt(ln), checksum: lc }), remote: create(ExecutionChecksumSchema, { workflowId, runId, eventCount: BigInt(rn), checksum: rc }) };
}

/** The undecided differences and tokens in the token's form. */
export function pendingOf(p: BehindPending): VerifyToken["b"] {
  return {
    d: p.diffs.map((d) => [d.workflowId, d.runId, String(d.local!.eventCount), d.local!.checksum, String(d.remote!.eventCount), d.remote!.checksum]),
    l: base64Encode(p.resume.local.token),
    r: base64Encode(p.resume.remote.token),
    ln: p.resume.local.first,
    rn: p.resume.remote.first,
  };
}

/** A side's walk: its runs in hand (carried and this page's) and whether it has given its last. */
export interface SideWalk {
  runs: RunChecksum[];
  done: boolean;
}

/** The checksums token to send a side, from VerifyToken's l or r. */
export const sideToken = (t: string) => base64Decode(t);

/** A side's next VerifyToken entry from the token its page answered with: null when its walk is done. */
export const nextSideToken = (t: Uint8Array) => (t.length ? base64Encode(t) : null);

/** The runs a token carries, as checksums. */
export function carried(t: VerifyToken, side: "local" | "remote"): RunChecksum[] {
  if (t.c?.side !== side) return [];
  return t.c.runs.map(([workflowId, runId, n, checksum]) => ({ workflowId, runId, eventCount: BigInt(n), checksum }));
}

/**
 * Splits the runs both sides gave at the frontier: the last run both walks have passed (a side
 * whose walk is done has passed every run). Runs up to it are compared now; the side's runs past
 * it wait for the next page, where the other side catches up. rank gives every run's place in the
 * walks' order (the database's order of workflow id, then run id), the previous frontier's too.
 * A run a side gives behind the previous frontier, or out of order, means the two walks order runs
 * differently (their databases' collations differ): comparing by frontier would report runs
 * missing that are not, so the page fails.
 */
export function splitAtFrontier(rank: (x: RunKey) => number, previous: RunKey | undefined, local: SideWalk, remote: SideWalk) {
  const floor = previous ? rank(previous) : -1;
  for (const [side, walk] of [["local", local], ["remote", remote]] as const) {
    let last = floor;
    for (const x of walk.runs) {
      if (rank(x) <= last) throw failedPrecondition(`the ${side} cluster's ${ORDER_DIFFERS} (do their databases' collations differ?); a VerifyReplication without page_size compares the whole namespace in one call`);
      last = rank(x);
    }
  }
  const edge = (w: SideWalk) => (w.done ? Infinity : w.runs.length ? rank(w.runs.at(-1)!) : floor);
  const frontier = Math.min(edge(local), edge(remote));
  const within = (x: RunKey) => rank(x) <= frontier;
  const past = (w: SideWalk) => w.runs.filter((x) => !within(x));
  const [localPast, remotePast] = [past(local), past(remote)];
  const all = [...local.runs, ...remote.runs, ...(previous ? [previous] : [])];
  return {
    local: local.runs.filter(within),
    remote: remote.runs.filter(within),
    /** Both walks are done: every run compared. */
    done: frontier === Infinity,
    /** The last run compared so far (none before the first). */
    frontier: frontier === Infinity || frontier === floor ? previous : all.find((x) => rank(x) === frontier),
    carry: localPast.length ? { side: "local" as const, runs: localPast } : remotePast.length ? { side: "remote" as const, runs: remotePast } : undefined,
  };
}

/** A carry in the token's form. */
export function carryOf(c: { side: "local" | "remote"; runs: RunChecksum[] } | undefined): VerifyToken["c"] {
  return c && { side: c.side, runs: c.runs.map((x) => [x.workflowId, x.runId, String(x.eventCount), x.checksum]) };
}
