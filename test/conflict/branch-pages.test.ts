import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create, toJson } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { listHistoryBranches } from "../../replication/branches";
import { AdminService, HistoryBranchSchema, ListHistoryBranchesRequestSchema, ListHistoryBranchesResponseSchema, type HistoryBranch, type ListHistoryBranchesResponse } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { TernError } from "../../src/errors";
import { encodeToken } from "../../src/persistence/page-token";
import { runCli, type Fakes } from "../cli/harness";
import { expectActiveOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";
import { branchLines, historyOf, plainEvents, setLink, splitOnOneRun } from "./support";

setDefaultTimeout(serverStartTimeout);

const NS = "branch-pages";
const WF = "w";
/** A's signals while cut off the first time: its branch's length past the fork. */
const SIGNALS = 12;

/** Every page of the run's branches on x at pageSize, following the tokens. */
async function pagesOf(x: TestCluster, pageSize: number): Promise<ListHistoryBranchesResponse[]> {
  const pages: ListHistoryBranchesResponse[] = [];
  let token: Uint8Array = new Uint8Array(0);
  do {
    const res = await x.client(AdminService).listHistoryBranches({ namespace: NS, workflowId: WF, pageSize, nextPageToken: token });
    pages.push(res);
    token = res.nextPageToken;
  } while (token.length > 0 && pages.length < 1000);
  return pages;
}

/** The pages' branches joined again, a branch cut by a page with its rest in the next. */
function joined(pages: ListHistoryBranchesResponse[]): HistoryBranch[] {
  const out: HistoryBranch[] = [];
  for (const b of pages.flatMap((p) => p.branches)) {
    const last = out.at(-1);
    if (last?.branchId === b.branchId) last.events.push(...b.events);
    else out.push({ ...b, events: [...b.events] });
  }
  return out;
}

/** Branches as comparable values: their fields, and their events as plainEvents. */
const comparable = (branches: HistoryBranch[]) => branches.map((b) => ({ fields: toJson(HistoryBranchSchema, { ...b, events: [] }), events: plainEvents(b.events) }));

/**
 * A run with three branches on A: split twice by forced failovers, A's first branch (version 1)
 * lost to B's (version 2), and B's second (version 2) to A's (version 101).
 */
for (const store of await testStores()) {
  describe(`history branches a page at a time, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    let whole: ListHistoryBranchesResponse;
    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, {}]);
      await splitOnOneRun(a, b, { namespace: NS, workflowId: WF, signals: SIGNALS, payload: "x" });
      await setLink(a, b, true);
      await eventually(async () => expect((await a.client(AdminService).listHistoryBranches({ namespace: NS, workflowId: WF })).branches).toHaveLength(2), { timeout: 30_000 });
      await eventually(async () => expect(plainEvents(await historyOf(b, NS, WF))).toEqual(plainEvents(await historyOf(a, NS, WF))), { timeout: 30_000 });
      await setLink(a, b, false);
      await a.client(WorkflowService).updateNamespace({ namespace: NS, activeClusterName: a.name });
      for (let i = 0; i < 3; i++) await a.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF }, signalName: `a2-${i}`, requestId: `a2-${i}` });
      await b.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF }, signalName: "b2-0", requestId: "b2-0" });
      await setLink(a, b, true);
      await expectActiveOn(b, NS, a.name, 101n);
      await eventually(async () => {
        const res = await a.client(AdminService).listHistoryBranches({ namespace: NS, workflowId: WF });
        expect(res.branches.map((br) => br.current), (await branchLines(a, NS, WF)).join("\n")).toEqual([true, false, false]);
        whole = res;
      }, { timeout: 30_000 });
    });
    afterAll(() => Promise.all([a, b].map((x) => x?.destroy())));

    test("TestBranchesPagedAtAnySizeAddUpToTheWholeAnswer", async () => {
      const total = whole.branches.reduce((n, br) => n + br.events.length, 0);
      expect(total).toBeGreaterThan(2 * SIGNALS);
      for (const size of [1, 7, total - 1, total, 1000]) {
        const pages = await pagesOf(a, size);
        expect(pages.length, `page size ${size}`).toBe(Math.ceil(total / size));
        for (const p of pages) {
          expect(p.runId).toBe(whole.runId);
          expect(p.branches.reduce((n, br) => n + br.events.length, 0)).toBeLessThanOrEqual(size);
        }
        expect(pages.at(-1)!.nextPageToken).toHaveLength(0);
        expect(comparable(joined(pages)), `page size ${size}`).toEqual(comparable(whole.branches));
      }
      // Above the most a page holds, 1,000.
      expect((await pagesOf(a, 5000)).length).toBe(1);
    });

    test("TestAPageEndsAtItsByteBudgetAcrossBranches", async () => {
      const db = a.server.database.db;
      const total = whole.branches.reduce((n, br) => n + br.events.length, 0);
      const pages: ListHistoryBranchesResponse[] = [];
      let token: Uint8Array = new Uint8Array(0);
      do {
        const res = await listHistoryBranches(db, create(ListHistoryBranchesRequestSchema, { namespace: NS, workflowId: WF, pageSize: 1000, nextPageToken: token }), { pageBytes: 1 });
        pages.push(res);
        token = res.nextPageToken;
      } while (token.length > 0 && pages.length <= total);
      // Each page's first event spends the budget: no page takes another, nor the next branch's first.
      expect(pages.map((p) => p.branches.reduce((n, br) => n + br.events.length, 0))).toEqual(Array.from({ length: total }, () => 1));
      expect(comparable(joined(pages))).toEqual(comparable(whole.branches));
    });

    test("TestACallerThatDoesNotPageGetsTheWholeAnswerOrFailedPreconditionPastItsBound", async () => {
      const db = a.server.database.db;
      const total = whole.branches.reduce((n, br) => n + br.events.length, 0);
      const req = create(ListHistoryBranchesRequestSchema, { namespace: NS, workflowId: WF });
      expect(whole.nextPageToken).toHaveLength(0);
      expect(comparable((await listHistoryBranches(db, req, { wholeEvents: total })).branches)).toEqual(comparable(whole.branches));
      for (const bounds of [{ wholeEvents: total - 1 }, { wholeBytes: 1 }]) {
        const err = await listHistoryBranches(db, req, bounds).then(() => undefined, (e: unknown) => e);
        expect(err, JSON.stringify(bounds)).toBeInstanceOf(TernError);
        expect((err as TernError).kind).toBe("failed_precondition");
        expect((err as TernError).message).toContain("ask with page_size and follow next_page_token");
      }
    });

    test("TestABadOrForeignPageTokenIsInvalidArgument", async () => {
      const admin = a.client(AdminService);
      const first = await admin.listHistoryBranches({ namespace: NS, workflowId: WF, pageSize: 3 });
      expect(first.nextPageToken.length).toBeGreaterThan(0);
      const cases = [
        { namespace: NS, workflowId: WF, pageSize: 3, nextPageToken: new TextEncoder().encode("garbage") },
        { namespace: NS, workflowId: WF, pageSize: 3, nextPageToken: encodeToken({ runId: whole.runId, next: 2 }) },
        { namespace: NS, workflowId: "other", pageSize: 3, nextPageToken: first.nextPageToken },
        { namespace: NS, workflowId: WF, runId: "another-run", pageSize: 3, nextPageToken: first.nextPageToken },
        { namespace: NS, workflowId: WF, pageSize: -1 },
      ];
      const texts = ["next_page_token is not valid", "next_page_token is not valid", "next_page_token is for workflow", "next_page_token is for run", "page_size must not be negative"];
      for (const [i, req] of cases.entries()) await rejects(admin.listHistoryBranches(req), Code.InvalidArgument, texts[i]!);
      // The token round trip: the next page starts where the first ended, on the run it named.
      const next = await admin.listHistoryBranches({ namespace: NS, workflowId: WF, runId: whole.runId, pageSize: 3, nextPageToken: first.nextPageToken });
      expect(next.branches[0]!.events.map((e) => e.eventId)).toEqual([4n, 5n, 6n]);
      // A token whose branch is no longer what the pages before it read: FAILED_PRECONDITION, not a mix of two branches.
      const moved = encodeToken({ runId: whole.runId, workflowId: WF, branch: 0, next: 4, v: 999 });
      await rejects(admin.listHistoryBranches({ namespace: NS, workflowId: WF, pageSize: 3, nextPageToken: moved }), Code.FailedPrecondition, "changed while they were paged");
    });

    test("TestWorkflowShowAllBranchesFollowsManyPagesAndPrintsWhatTheWholeAnswerPrinted", async () => {
      // The CLI over a server that pages 4 events at a time.
      let calls = 0;
      const admin: Fakes["admin"] = {
        listHistoryBranches: (req) => {
          calls++;
          expect(req.pageSize).toBe(1000);
          return a.client(AdminService).listHistoryBranches({ ...req, pageSize: 4 });
        },
      };
      const table = await runCli(["workflow", "show", "-n", NS, "-w", WF, "--all-branches"], { admin });
      expect(table.stderr).toBe("");
      expect(table.code).toBe(0);
      expect(calls).toBeGreaterThan(10);
      const old = await runCli(["workflow", "show", "-n", NS, "-w", WF, "--all-branches"], { admin: { listHistoryBranches: () => whole } });
      expect(table.stdout).toBe(old.stdout);
      expect(table.stdout.match(/^(current branch|branch \d+, lost a conflict)/gm)).toHaveLength(3);
      const json = await runCli(["workflow", "show", "-n", NS, "-w", WF, "--all-branches", "-o", "json"], { admin });
      expect(json.code).toBe(0);
      expect(json.stdout).toBe(JSON.stringify(toJson(ListHistoryBranchesResponseSchema, whole), null, 2) + "\n");
    });
  });
}
