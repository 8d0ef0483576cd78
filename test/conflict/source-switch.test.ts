import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { sql } from "drizzle-orm";
import type { HistoryApplier, IncomingTask } from "../../replication/applier";
import { versionHistoryFromProto } from "../../replication/version-history";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import type { HistoryEvent } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { backfillDone, tern } from "../backfill/support";
import { connectAll, describeOn, expectActiveOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { json } from "../support/payload";
import { startTestCluster, type TestCluster, type TestClusterOptions } from "../support/server";
import { testStores } from "../support/stores";
import { branchLines, expectNoDifference, historyOf, inside, setLink, signalCounts, signalKey, type Inside } from "./support";

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

/** Comparable form of events (eventTime and all). */
const plain = (events: HistoryEvent[]) => events.map((e) => JSON.stringify(e, (_k, v) => (typeof v === "bigint" ? String(v) : v)));

/**
 * A source that switches its current branch in the middle of a backfill (DESIGN.md sections 4
 * and 6): B (active, version 2) backfills A's losing branch of WF (version 1) a page at a time,
 * and between two pages A takes B's branch, which wins, as its current one (B's events replicate
 * to A as B applies the pages). The pages after that are still A's branch, now kept on A: B ends
 * with it whole and each of its signals re-applied once, not with the pages it had before the
 * switch and the job marked done.
 */
for (const store of await testStores()) {
  describe(`a backfill source that switches branches between two pages, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    const ia: Inside = {};
    const stopped: TestCluster[] = [];
    const wf = (x: TestCluster) => x.client(WorkflowService);
    /** A's current branch at the end of the split: what B must keep. */
    let aBranch: HistoryEvent[] = [];
    /** B's first event after the fork (its signal b-0, version 2), as a task for A's applier. */
    let bFirst: IncomingTask;

    /**
     * While on, B's first apply of a page of WF first gives A B's first event after the fork,
     * through A's applier and database: A's current branch becomes B's (version 2 wins) after B
     * fetched that page and before it fetches the next.
     */
    const switchAt = { on: false, pages: [] as string[], switched: false };
    const switching = (applier: HistoryApplier): HistoryApplier => ({
      ...applier,
      async applyTask(tx, ns, task, fetchRaw) {
        if (switchAt.on && task.workflowId === WF) {
          switchAt.pages.push(`[${task.firstEventId}, ${task.nextEventId})`);
          if (!switchAt.switched) {
            switchAt.switched = true;
            const aNs = await ia.namespaces!.getByName(NS);
            await a.server.database.db.transaction((atx) =>
              ia.applier!.applyTask(atx, aNs, bFirst, () => Promise.reject(new Error("A lacks none of B's events before b-0"))));
          }
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

    const signalNames = async (x: TestCluster) =>
      (await historyOf(x, NS, WF)).flatMap((e) => (e.attributes.case === "workflowExecutionSignaledEventAttributes" ? [e.attributes.value.signalName] : []));

    beforeAll(async () => {
      [a, b] = await startClusters(store, [inside(ia), bOptions]);
      await connectAll([a, b]);
      await wf(a).registerNamespace({ namespace: NS, isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await expectActiveOn(b, NS, "clusterA", 1n);
      const { runId } = await wf(a).startWorkflowExecution({ namespace: NS, workflowId: WF, workflowType: "T", taskQueue: "q", requestId: "start" });
      await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF }, signalName: "before", requestId: "before" });
      await eventually(async () => expect((await historyOf(b, NS, WF)).length).toBe(FORK));

      // Cut off, B is forced active (version 2) while A still believes it is (version 1).
      await setLink(a, b, false);
      await wf(b).updateNamespace({ namespace: NS, activeClusterName: "clusterB" });
      expect((await describeOn(a, NS)).failoverVersion).toBe(1n);
      for (let i = 0; i < SIGNALS; i++) {
        await wf(a).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF }, signalName: `a-${i}`, input: json(PAYLOAD), requestId: `a-${i}` });
      }
      await wf(b).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: WF }, signalName: "b-0", requestId: "b-0" });
      aBranch = await historyOf(a, NS, WF);
      expect(aBranch.length).toBe(FORK + SIGNALS);
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

    test("TestABackfillWhoseSourceSwitchesBranchesBetweenPagesBringsTheWholeBranch", async () => {
      switchAt.on = true;
      expect((await tern(b, "operator", "namespace", "backfill", NS, "--from", "clusterA")).code).toBe(0);
      await backfillDone(b, NS, "clusterA");
      const context = async () => `pages ${switchAt.pages.join(" ")}\n${(await branchLines(b, NS, WF)).join("\n")}`;
      expect(switchAt.switched).toBe(true);
      expect(switchAt.pages.length, await context()).toBeGreaterThan(2);

      // A's branch is kept whole on B, each event once, as A wrote it.
      const branches = (await b.client(AdminService).listHistoryBranches({ namespace: NS, workflowId: WF })).branches;
      const lost = branches.filter((br) => !br.current);
      expect(lost.length, await context()).toBe(1);
      expect(plain(lost[0]!.events), await context()).toEqual(plain(aBranch));
      // Each of A's acknowledged signals is on B's current branch once.
      expect(await signalNames(b), await context()).toEqual(["before", "b-0", ...Array.from({ length: SIGNALS }, (_, i) => `a-${i}`)]);
      const counts = signalCounts(await historyOf(b, NS, WF));
      for (let i = 0; i < SIGNALS; i++) expect(counts.get(signalKey(`a-${i}`, PAYLOAD))).toBe(1);

      // A converges on B's branch: both hold the same histories.
      await eventually(async () => {
        await expectNoDifference([a, b], NS);
        expect(plain(await historyOf(a, NS, WF))).toEqual(plain(await historyOf(b, NS, WF)));
      }, { timeout: 30_000 });
    });
  });
}
