import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { eq } from "drizzle-orm";
import { Code, ConnectError } from "@connectrpc/connect";
import { listHistoryBranches } from "../../replication/branches";
import { AdminService, ListHistoryBranchesRequestSchema, type ListHistoryBranchesResponse } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createHistoryQueries } from "../../src/history/queries";
import { createEventNotifier } from "../../src/history/notifier";
import type { Db } from "../../src/persistence/database";
import { encodeToken } from "../../src/persistence/page-token";
import type { ExecutionRow } from "../../src/history/execution-store";
import { executions, historyBranches } from "../../src/persistence/schema";
import { loadBranches } from "../../src/history/branch-store";
import { runCli, type Fakes } from "../cli/harness";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { awaitedLater, rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";
import { branchLines, inside, pausingDb, plainEvents, setLink, splitOnOneRun, type Inside } from "./support";

setDefaultTimeout(serverStartTimeout);

const NS = "history-pages";
const WF = "w";
const SIGNALS = 12;
/** Events on A's branch before it loses: started, "before", A's signals. */
const A_EVENTS = 2 + SIGNALS;

/**
 * A client reading a run's history a page at a time on A while conflict resolution switches the
 * run's current branch (A's branch at version 1 loses to B's at version 2 when the link heals):
 * the page after the switch was read from the new branch, its events after the fork mixed
 * with the first page's, silently. It is refused now, as Temporal refuses CurrentBranchChanged.
 */
for (const store of await testStores()) {
  describe(`a history paged across a conflict's branch switch, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    const history = (x: TestCluster, req: { pageSize: number; token?: Uint8Array; wait?: boolean }) =>
      x.client(WorkflowService).getWorkflowExecutionHistory({
        namespace: NS, execution: { workflowId: WF }, maximumPageSize: req.pageSize, nextPageToken: req.token,
        waitNewEvent: req.wait ?? false, ...(req.wait && { waitTimeout: { seconds: 50n } }),
      });
    let firstPage: Awaited<ReturnType<typeof history>>;
    let tailPage: Awaited<ReturnType<typeof history>>;
    let tailPoll: Promise<unknown>;
    let runId: string;
    /** A's run as it was before the switch. */
    let before: ExecutionRow;
    const ia: Inside = {};
    /** A page of the run's branches whose reads the switch came between. */
    let racedBranches: ListHistoryBranchesResponse;

    beforeAll(async () => {
      [a, b] = await startClusters(store, [inside(ia), {}]);
      ({ runId } = await splitOnOneRun(a, b, { namespace: NS, workflowId: WF, signals: SIGNALS, payload: "x" }));
      before = (await a.server.database.db.select().from(executions).where(eq(executions.runId, runId)))[0]!;
      firstPage = await history(a, { pageSize: 5 });
      expect(firstPage.history!.events.map((e) => e.version)).toEqual([1n, 1n, 1n, 1n, 1n]);
      // A follower at the end of A's branch, waiting for event A_EVENTS + 1 when the switch comes.
      tailPage = await history(a, { pageSize: 1000, wait: true });
      expect(tailPage.history!.events).toHaveLength(A_EVENTS);
      tailPoll = awaitedLater(history(a, { pageSize: 1000, token: tailPage.nextPageToken, wait: true }));
      // The link heals while a page of the run's branches is between its read of the run and of
      // its branches: the switch commits there. PGlite runs one transaction at a time: with the
      // page read in one, the heal and the switch wait for it instead.
      let healing: Promise<void> | undefined;
      const racing = pausingDb(a.server.database.db, historyBranches, async (inTransaction) => {
        healing = awaitedLater(setLink(a, b, true));
        if (store === "pglite" && inTransaction) return;
        await healing;
        await eventually(async () => expect(await loadBranches(a.server.database.db, before)).toHaveLength(1), { timeout: 30_000 });
      });
      racedBranches = await listHistoryBranches(racing, create(ListHistoryBranchesRequestSchema, { namespace: NS, workflowId: WF, pageSize: 1000 }));
      await healing;
      await eventually(async () => {
        const branches = (await a.client(AdminService).listHistoryBranches({ namespace: NS, workflowId: WF })).branches;
        expect(branches.map((br) => br.current), (await branchLines(a, NS, WF)).join("\n")).toEqual([true, false]);
        // B's branch whole: "b-0", then A's signals B re-applied; no later write changes it.
        expect((await history(a, { pageSize: 1000 })).history!.events).toHaveLength(A_EVENTS + 1);
      }, { timeout: 30_000 });
    });
    afterAll(() => Promise.all([a, b].map((x) => x?.destroy())));

    test("TestABranchesPageReadAcrossTheSwitchIsOneSnapshot", () => {
      // The run as it was before the switch, with its events then: A's branch alone, all at version 1.
      expect(racedBranches.branches.map((br) => [br.branchId, br.current])).toEqual([[0, true]]);
      const [current] = racedBranches.branches;
      expect(current!.versionHistory!.items.map((i) => [i.eventId, i.version])).toEqual(before.versionHistory.map((i) => [BigInt(i.eventId), BigInt(i.version)]));
      expect(current!.events.map((e) => e.version)).toEqual(Array.from({ length: A_EVENTS }, () => 1n));
    });

    /** A's branch as A keeps it since it lost: branch 1, from event 1. */
    const keptBranch = async () => (await a.client(AdminService).listHistoryBranches({ namespace: NS, workflowId: WF })).branches.find((br) => br.branchId === 1)!;

    test("TestAPageAfterTheRunSwitchedBranchReadsOnAlongItsBranch", async () => {
      // As Temporal reads on along its token's branch token: A's branch, kept, to its end; not B's events.
      const pages = [firstPage];
      while (pages.at(-1)!.nextPageToken.length > 0 && pages.length < 10) pages.push(await history(a, { pageSize: 5, token: pages.at(-1)!.nextPageToken }));
      expect(pages.map((p) => p.history!.events.length)).toEqual([5, 5, 4]);
      expect(plainEvents(pages.flatMap((p) => p.history!.events))).toEqual(plainEvents((await keptBranch()).events));
      // A long poll there follows the current branch only: refused, as Temporal answers CurrentBranchChanged.
      await rejects(history(a, { pageSize: 5, token: pages[1]!.nextPageToken, wait: true }), Code.FailedPrecondition, "read the history again from the first page");
      // Read again from the first page, every event is the current branch's, B's from event 3 on.
      const again = await history(a, { pageSize: 1000 });
      expect(again.history!.events[2]!.version).toBe(2n);
    });

    test("TestALongPollWaitingWhenTheRunSwitchedBranchIsRefused", async () => {
      await rejects(tailPoll, Code.FailedPrecondition, "read the history again from the first page");
    });

    test("TestAPageWhoseRunWasReadBeforeTheSwitchAndItsEventsAfterReadsItsOwnBranch", async () => {
      // A's database, whose first read of the run answers the run as it was before the switch:
      // the switch committed between a page's read of the run and its read of the events.
      const db = a.server.database.db;
      let stale = true;
      const once = { where: () => once, orderBy: () => once, limit: () => once, then: (ok: (rows: ExecutionRow[]) => unknown) => ok([before]) };
      const racing = new Proxy(db, {
        get: (target, p, receiver) => p !== "select" ? Reflect.get(target, p, receiver) : (...args: unknown[]) => {
          const query = (target.select as (...a: unknown[]) => { from: (t: unknown) => unknown })(...args);
          return { from: (t: unknown) => (t === executions && stale ? ((stale = false), once) : query.from(t)) };
        },
      }) as Db;
      const queries = createHistoryQueries({ db: racing, namespaces: ia.namespaces!, notifier: createEventNotifier() });
      const read = queries.getHistory({ namespace: NS, workflowId: WF, runId: "", pageSize: 5, token: firstPage.nextPageToken, waitNewEvent: false, waitMs: 0 });
      const page = await read;
      expect(stale).toBe(false);
      expect(page.events.map((e) => [e.eventId, e.version])).toEqual([6n, 7n, 8n, 9n, 10n].map((id) => [id, 1n]));
    });

    /**
     * The CLI's workflow service: A's, 5 events a page, whose first answer is `first` (read before
     * the switch) when given, and whose second is refusedWith when given (a server from before
     * pages read on along their branch).
     */
    const cliWorkflow = (first?: typeof firstPage, refusedWith?: ConnectError): Fakes["workflow"] => {
      let calls = 0;
      return {
        getWorkflowExecutionHistory: async (req) => {
          calls++;
          if (calls === 1 && first) return first;
          if (calls === 2 && refusedWith) throw refusedWith;
          return a.client(WorkflowService).getWorkflowExecutionHistory({ ...req, maximumPageSize: 5 });
        },
      };
    };

    test("TestWorkflowShowOfARunThatSwitchedBranchBetweenPagesPrintsTheBranchItBeganOn", async () => {
      const show = ["workflow", "show", "-n", NS, "-w", WF];
      // What a read begun before the switch prints is A's branch whole, as it stood then: one answer of its events.
      const kept = await keptBranch();
      const whole: Fakes["workflow"] = { getWorkflowExecutionHistory: async () => ({ ...firstPage, history: { ...firstPage.history!, events: kept.events }, nextPageToken: new Uint8Array() }) };
      for (const format of [[], ["-o", "json"]]) {
        const switched = await runCli([...show, ...format], { workflow: cliWorkflow(firstPage) });
        expect(switched.stderr).toBe("");
        expect(switched.code).toBe(0);
        expect(switched.stdout).toBe((await runCli([...show, ...format], { workflow: whole })).stdout);
      }
      // A server that refuses the page (from before) gets the table read again from the first page: the current branch alone.
      const refusal = new ConnectError("the history of workflow \"w\" changed branch while it was paged", Code.FailedPrecondition);
      const again = await runCli(show, { workflow: cliWorkflow(firstPage, refusal) });
      expect(again.code).toBe(0);
      expect(again.stdout).toBe((await runCli(show, { workflow: cliWorkflow() })).stdout);
      // -o json wrote the first page already: it exits 1 with the refusal, not with two branches' events.
      const json = await runCli([...show, "-o", "json"], { workflow: cliWorkflow(firstPage, refusal) });
      expect(json.code).toBe(1);
      expect(json.stderr).toContain("changed branch while it was paged");
    });

    test("TestWorkflowShowFollowSaysTheRunSwitchedBranchAndExits1", async () => {
      const res = await runCli(["workflow", "show", "-n", NS, "-w", WF, "--follow"], { workflow: cliWorkflow(tailPage) });
      expect(res.code).toBe(1);
      expect(res.stderr).toContain("failed_precondition");
      expect(res.stderr).toContain("read the history again from the first page");
      // A's events before the switch, printed as they came: the header and one line each.
      expect(res.stdout.trimEnd().split("\n")).toHaveLength(1 + A_EVENTS);
    });

    test("TestATokenWithoutABranchStillPagesTheCurrentBranch", async () => {
      // Tokens written before they carried the branch's version are read as before, unchecked.
      const old = encodeToken({ runId, next: 2, workflowId: WF });
      const page = await history(a, { pageSize: 1, token: old });
      expect(page.history!.events.map((e) => [e.eventId, e.version])).toEqual([[2n, 1n]]);
      // The next page's token names the current branch: it pages on, into B's events.
      const next = await history(a, { pageSize: 1, token: page.nextPageToken });
      expect(next.history!.events.map((e) => [e.eventId, e.version])).toEqual([[3n, 2n]]);
    });
  });
}
