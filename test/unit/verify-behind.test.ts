import { describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { ExecutionChecksumSchema } from "../../src/gen/tern/admin/v1/service_pb";
import { behindOf, type BehindPending, type Diff, type PrefixFetch } from "../../replication/verify-compare";

const RUNS = 2_500;
/** Runs behind on the remote (5 events of this side's 10), in an order other than their keys' (as the walks' pages mix). */
const diffs: Diff[] = Array.from({ length: RUNS }, (_, i) => {
  const workflowId = `w${String((i * 7919) % RUNS).padStart(5, "0")}`;
  const side = (eventCount: bigint, checksum: string) => create(ExecutionChecksumSchema, { workflowId, runId: "r", eventCount, checksum });
  return { workflowId, runId: "r", local: side(10n, "whole"), remote: side(5n, "start") };
});

/** A side that answers a chunk's prefixes 400 a call, in key order, its token the last key answered. */
function prefixesOfThisSide(): { fetch: PrefixFetch; calls: () => number } {
  let calls = 0;
  const fetch: PrefixFetch = async (chunk, token) => {
    calls++;
    const after = new TextDecoder().decode(token);
    const rest = [...chunk].sort((a, b) => (a.workflowId < b.workflowId ? -1 : 1)).filter((p) => p.workflowId > after);
    const page = rest.slice(0, 400);
    return {
      executions: page.map((p) => create(ExecutionChecksumSchema, { ...p, checksum: "start" })),
      nextPageToken: rest.length > page.length ? new TextEncoder().encode(page.at(-1)!.workflowId) : new Uint8Array(0),
    };
  };
  return { fetch, calls: () => calls };
}

const none: PrefixFetch = async () => ({ executions: [], nextPageToken: new Uint8Array(0) });

describe("behindOf over several pages", () => {
  test("TestUndecidedRunsAreDecidedByTheNextPages: chunks of 1,000 prefixes, each answered over several calls, one call a page", async () => {
    const side = prefixesOfThisSide();
    const behind: string[] = [];
    const diverging: string[] = [];
    let pending: BehindPending | undefined;
    let pages = 0;
    do {
      const res = await behindOf(pending?.diffs ?? diffs, { local: side.fetch, remote: none }, { until: 0, ...(pending && { resume: pending.resume }) });
      behind.push(...res.behind.map((d) => d.workflowId));
      diverging.push(...res.diverging.map((d) => d.workflowId));
      pending = res.pending;
    } while (pending && ++pages < 100);
    expect([behind.length, diverging]).toEqual([RUNS, []]);
    expect(side.calls()).toBeGreaterThanOrEqual(7); // chunks of 1,000, 1,000 and 500: 3 calls, 3 and 2
  });
});
