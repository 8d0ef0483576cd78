import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { sql } from "drizzle-orm";
import type { HistoryApplier, IncomingTask } from "../../replication/applier";
import { versionHistoryFromProto } from "../../replication/version-history";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import type { HistoryEvent } from "../../src/gen/tern/common/v1/common_pb";
import { backfillDone, tern } from "../backfill/support";
import { expectActiveOn, startClusters } from "../failover/mesh";
import { startTestCluster, type TestCluster, type TestClusterOptions } from "../support/server";
import { testStores } from "../support/stores";
import { branchLines, expectLosingBranchKept, inside, setLink, splitOnOneRun, type Inside } from "./support";

setDefaultTimeout(180_000);

const NS = "switched";
const WF = "long-losing";
/** Events the run holds before the split: started, one signal. */
const FORK = 2;
/** A's signals during the split (its branch loses to B's). */
const SIGNALS = 24;
/** Each signal's payload: with PAGE_BYTES, a few events a raw history page. */
const PAYLOAD = "p".repeat(600);
/** Bytes of events B's backfill asks a page for: A's branch comes in several pages. */
const PAGE_BYTES = 4_000;

/** Runs A starts during the split, listed before WF: the backfill applies them first, 8 at a time. */
const FILLERS = 8;

/**
 * Where in B's backfill A switches its current branch of WF: between two pages of it (B's first
 * apply of a page of WF), or between the listing that named WF with A's branch and WF's first
 * page (B's first apply of a filler: with FILLERS runs in flight, WF's fetch waits for one).
 */
const WINDOWS = { "between two pages": (workflowId: string) => workflowId === WF, "between the listing and the first page": (workflowId: string) => workflowId.startsWith("filler-") };

/**
 * A source that switches its current branch in the middle of a backfill (DESIGN.md sections 4
 * and 6): B (active, version 2) backfills A's losing branch of WF (version 1) a page at a time,
 * and A takes B's branch, which wins, as its current one (B's events replicate to A as B applies
 * the pages). The pages B fetches after that are still of the branch the listing named, now kept
 * on A: B ends with it whole and each of its signals re-applied once, not with the pages it had
 * before the switch (or none) and the job marked done.
 */
for (const store of await testStores()) for (const [window, switchesOn] of Object.entries(WINDOWS)) {
  describe(`a backfill source that switches branches ${window}, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    const ia: Inside = {};
    const stopped: TestCluster[] = [];
    /** A's current branch at the end of the split: what B must keep. */
    let aBranch: HistoryEvent[] = [];
    /** B's first event after the fork (its signal b-0, version 2), as a task for A's applier. */
    let bFirst: IncomingTask;

    /**
     * While on, B's applies of the pages switchesOn names first wait for the switch, which the
     * first of them starts: A is given B's first event after the fork, through A's applier and
     * database, and its current branch becomes B's (version 2 wins), after B fetched that page
     * and before it fetches the next of WF.
     */
    const switchAt = { on: false, pages: [] as string[], switched: undefined as Promise<unknown> | undefined };
    const switching = (applier: HistoryApplier): HistoryApplier => ({
      ...applier,
      async applyTask(tx, ns, task, fetchRaw) {
        if (switchAt.on && task.workflowId === WF) switchAt.pages.push(`[${task.firstEventId}, ${task.nextEventId})`);
        if (switchAt.on && switchesOn(task.workflowId)) {
          switchAt.switched ??= ia.namespaces!.getByName(NS).then((aNs) =>
            a.server.database.db.transaction((atx) => ia.applier!.applyTask(atx, aNs, bFirst, () => Promise.reject(new Error("A lacks none of B's events before b-0")))));
          await switchAt.switched;
        }
        return applier.applyTask(tx, ns, task, fetchRaw);
      },
    });
    const bOptions: Partial<TestClusterOptions> = { serverOptions: { replication: { historyPageBytes: PAGE_BYTES, wrapApplier: switching } } };

    /** Restarts x on its data. */
    async function restart(x: TestCluster, initialFailoverVersion: number, o: Partial<TestClusterOptions>): Promise<TestCluster> {
      await x.stop();
      stopped.push(x);
      return startTestCluster({ store, name: x.name, initialFailoverVersion, dataLocation: x.dataLocation, ...o });
    }

    beforeAll(async () => {
      [a, b] = await startClusters(store, [inside(ia), bOptions]);
      const split = await splitOnOneRun(a, b, { namespace: NS, workflowId: WF, signals: SIGNALS, payload: PAYLOAD });
      const runId = split.runId;
      aBranch = split.aBranch;
      for (let i = 0; i < FILLERS; i++) {
        await a.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId: `filler-${i}`, workflowType: "T", taskQueue: "q", requestId: `filler-${i}` });
      }
      const namespaceId = (await ia.namespaces!.getByName(NS)).id;
      const first = FORK + 1;
      const raw = await b.client(AdminService).getWorkflowExecutionRawHistory({ namespaceId, workflowId: WF, runId, firstEventId: BigInt(first), nextEventId: BigInt(first + 1) });
      expect(raw.events.map((e) => e.attributes.case === "workflowExecutionSignaledEventAttributes" && e.attributes.value.signalName)).toEqual(["b-0"]);
      bFirst = { namespaceId, workflowId: WF, runId, firstEventId: first, nextEventId: first + 1, events: raw.events, versionHistory: versionHistoryFromProto(raw.versionHistory?.items) };

      // The split's replication tasks are lost on both sides (a restart drops the ones the
      // servers held in memory): only B's backfill brings A's branch, while A holds it as its
      // current branch until the switch.
      for (const x of [a, b]) await x.server.database.db.execute(sql`delete from replication_tasks`);
      a = await restart(a, 1, inside(ia));
      b = await restart(b, 2, bOptions);
      await setLink(a, b, true);
      await expectActiveOn(a, NS, "clusterB", 2n);
    });
    afterAll(async () => {
      await Promise.all([a, b].map((x) => x?.destroy()));
      for (const x of stopped) await x.destroy();
    });

    test("TestABackfillWhoseSourceSwitchesBranchesMidwayBringsTheWholeListedBranch", async () => {
      switchAt.on = true;
      expect((await tern(b, "operator", "namespace", "backfill", NS, "--from", "clusterA")).code).toBe(0);
      await backfillDone(b, NS, "clusterA");
      const context = async () => `pages ${switchAt.pages.join(" ")}\n${(await branchLines(b, NS, WF)).join("\n")}`;
      expect(switchAt.switched).toBeDefined();
      expect(switchAt.pages.length, await context()).toBeGreaterThan(2);
      expect((await b.client(WorkflowService).listWorkflowExecutions({ namespace: NS, pageSize: 100 })).executions.length).toBe(FILLERS + 1);

      // A's branch is kept whole on B, each of its signals re-applied once; A converges on B's.
      await expectLosingBranchKept(a, b, { namespace: NS, workflowId: WF, signals: SIGNALS, payload: PAYLOAD, aBranch }, context);
    });
  });
}
