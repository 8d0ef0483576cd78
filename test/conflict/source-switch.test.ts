import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { sql } from "drizzle-orm";
import type { HistoryApplier, IncomingTask } from "../../replication/applier";
import { versionHistoryFromProto } from "../../replication/version-history";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
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

    beforeAll(async () => {
      [a, b] = await startClusters(store, [inside(ia), bOptions]);
      const split = await splitOnOneRun(a, b, { namespace: NS, workflowId: WF, signals: SIGNALS, payload: PAYLOAD });
      const runId = split.runId;
      aBranch = split.aBranch;
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

      // A's branch is kept whole on B, each of its signals re-applied once; A converges on B's.
      await expectLosingBranchKept(a, b, { namespace: NS, workflowId: WF, signals: SIGNALS, payload: PAYLOAD, aBranch }, context);
    });
  });
}
