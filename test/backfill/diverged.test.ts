import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { equals, type DescService } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { sql } from "drizzle-orm";
import { parseCounter } from "../../bench/lib/prom-histogram";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { EventType, HistoryEventSchema, WorkflowExecutionStatus, type HistoryEvent } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { branchLines, dlqLines, expectNoDifference, setLink, signalCounts, signalKey, versionBreaches } from "../conflict/support";
import { connectAll, describeOn, expectActiveOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { json } from "../support/payload";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { backfillDone, T, tern } from "./support";

setDefaultTimeout(180_000);

/** The namespace whose runs both sides write during the split. */
const NS = "split";
/** A namespace whose run only B writes during the split: A holds a prefix of it. */
const PREFIX_NS = "prefix";
/** A namespace whose losing side (A) takes the winner's branches before the winner takes its. */
const LOSER_FIRST_NS = "loser-first";
/** Events every run holds before the split: started, one signal. */
const FORK = 2;
/** About 1 MB of payload: a few fill a 4 MiB raw history page (RAW_HISTORY_PAGE_BYTES). */
const BIG = "x".repeat(1_000_000);
/** B's large signals on "long" during the split: its branch spans several 4 MiB pages. */
const LONG_SIGNALS = 10;

/**
 * The runs of NS and what each side writes during the split: A at version 1 (it still
 * believes it is active), B at version 2 (forced active). B's branch wins everywhere.
 */
const RUNS = {
  /** A's branch is the longer one, and loses. */
  "sig-a-longer": { a: 3, b: 1 },
  /** B's branch is the longer one: B lacks none of A's event ids. */
  "sig-b-longer": { a: 1, b: 3 },
  /** Both branches end at the same event id. */
  "sig-equal": { a: 1, b: 1 },
} as const;
/** A completes it (nothing to re-apply), B signals it: the same length, and B's reopens it. */
const CLOSED_EQUAL = "closed-equal";
/** A completes it, B signals it LONG_SIGNALS times with BIG payloads. */
const LONG = "long";
/** A signals it LOSING_SIGNALS times with BIG payloads, B once: the losing branch spans pages. */
const LONG_LOSING = "long-losing";
const LOSING_SIGNALS = 5;
/** The runs whose losing branch (A's) holds signals: B re-applies them. */
const SIGNALLED = [...Object.keys(RUNS), LONG_LOSING];
/** Every run of NS. */
const ALL = [...SIGNALLED, CLOSED_EQUAL, LONG];

/**
 * A client of x in the binary format: these histories hold megabytes of payloads, which the
 * JSON format encodes byte by byte in base64 on the same event loop as both servers.
 */
function binary<S extends DescService>(x: TestCluster, service: S): Client<S> {
  return createClient(service, createConnectTransport({ baseUrl: x.url, useBinaryFormat: true }));
}

/** A run's whole current branch on x, every page of it (a page stops at 4 MiB of events). */
async function historyOf(x: TestCluster, namespace: string, workflowId: string, runId = ""): Promise<HistoryEvent[]> {
  const events: HistoryEvent[] = [];
  let nextPageToken: Uint8Array = new Uint8Array();
  do {
    const res = await binary(x, WorkflowService).getWorkflowExecutionHistory({ namespace, execution: { workflowId, runId }, maximumPageSize: 1000, nextPageToken });
    events.push(...res.history!.events);
    nextPageToken = res.nextPageToken;
  } while (nextPageToken.length);
  return events;
}

/** Breaches of ids 1, 2, 3... and never decreasing versions on x's current branch of a run. */
async function versionBreachesOn(x: TestCluster, namespace: string, workflowId: string): Promise<string[]> {
  const [events, described] = await Promise.all([
    historyOf(x, namespace, workflowId),
    x.client(WorkflowService).describeWorkflowExecution({ namespace, execution: { workflowId } }),
  ]);
  return versionBreaches(events, described.versionHistory).map((br) => `${x.name} ${workflowId}: ${br}`);
}

/** Where two histories part (the first event that differs, or their lengths), or undefined when they are the same. */
function firstDifference(x: HistoryEvent[], y: HistoryEvent[]): string | undefined {
  const i = x.findIndex((e, i) => !y[i] || !equals(HistoryEventSchema, e, y[i]));
  if (i >= 0) return `event #${i + 1} differs (${x.length} events, ${y.length} on the other side)`;
  return x.length === y.length ? undefined : `${x.length} events, ${y.length} on the other side`;
}

const rawHistoryCalls = (x: TestCluster) => parseCounter(x.server.metrics.render(), "service_requests", { operation: "GetWorkflowExecutionRawHistory" });

/**
 * A split brain, then backfills in both directions (DESIGN.md section 4): B, whose branches are
 * written at the higher failover version, takes A's first, keeps its own and re-applies A's
 * acknowledged signals (it is active); then A takes B's and converges on them. B's re-applied
 * signals reach A through replication too (gap repair), so the runs A converges on through
 * the backfill alone are the ones A completed (nothing is re-applied): closed-equal and long.
 */
for (const store of await testStores()) {
  describe(`backfill meets runs that diverged in a split brain, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    /** Servers stopped for a restart: they own the data, removed once the restarted ones stop. */
    const stopped: TestCluster[] = [];
    const wf = (x: TestCluster) => x.client(WorkflowService);
    /** Every signal a cluster acknowledged, per workflow id. */
    const acked = new Map<string, string[]>();
    let prefixRun = "";

    async function signal(x: TestCluster, namespace: string, workflowId: string, name: string, payload: string) {
      await wf(x).signalWorkflowExecution({ namespace, workflowExecution: { workflowId }, signalName: name, input: json(payload), requestId: `${x.name}-${name}-${workflowId}` });
      const key = signalKey(name, payload);
      acked.set(workflowId, [...(acked.get(workflowId) ?? []), key]);
    }

    /** Restarts x on its data: what it held in memory of its replication tasks (the outbox tail) is gone. */
    async function restart(x: TestCluster, initialFailoverVersion: number): Promise<TestCluster> {
      await x.stop();
      stopped.push(x);
      return startTestCluster({ store, name: x.name, initialFailoverVersion, dataLocation: x.dataLocation });
    }

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, {}]);
      await connectAll([a, b]);
      for (const ns of [NS, PREFIX_NS, LOSER_FIRST_NS]) {
        await wf(a).registerNamespace({ namespace: ns, isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
        await expectActiveOn(b, ns, "clusterA", 1n);
      }
      for (const id of ALL) {
        await wf(a).startWorkflowExecution({ namespace: NS, workflowId: id, ...T });
        await signal(a, NS, id, "before", id);
      }
      // The prefix run is more than a page long before the split: B gets it all through replication.
      await wf(a).startWorkflowExecution({ namespace: LOSER_FIRST_NS, workflowId: "loser-first", ...T });
      await signal(a, LOSER_FIRST_NS, "loser-first", "before", "loser-first");
      prefixRun = (await wf(a).startWorkflowExecution({ namespace: PREFIX_NS, workflowId: "grown-on-b", ...T })).runId;
      for (let i = 0; i < 5; i++) await signal(a, PREFIX_NS, "grown-on-b", `big-${i}`, BIG);
      await eventually(() => expectNoDifference([a, b], NS), { timeout: 30_000 });
      await eventually(() => expectNoDifference([a, b], PREFIX_NS), { timeout: 30_000 });
      await eventually(() => expectNoDifference([a, b], LOSER_FIRST_NS), { timeout: 30_000 });

      // The link is cut; B is forced active while A still believes it is.
      await setLink(a, b, false);
      for (const ns of [NS, PREFIX_NS, LOSER_FIRST_NS]) {
        expect((await wf(b).updateNamespace({ namespace: ns, activeClusterName: "clusterB" })).namespace!.failoverVersion).toBe(2n);
        expect((await describeOn(a, ns)).replicationConfig!.activeClusterName).toBe("clusterA");
      }
      for (const [id, n] of Object.entries(RUNS)) {
        for (let i = 0; i < n.a; i++) await signal(a, NS, id, `a-split-${i}`, id);
        for (let i = 0; i < n.b; i++) await signal(b, NS, id, `b-split-${i}`, id);
      }
      for (const id of [CLOSED_EQUAL, LONG]) await wf(a).completeWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: id } });
      await signal(b, NS, CLOSED_EQUAL, "b-split", CLOSED_EQUAL);
      for (let i = 0; i < LONG_SIGNALS; i++) await signal(b, NS, LONG, `b-big-${i}`, BIG);
      for (let i = 0; i < LOSING_SIGNALS; i++) await signal(a, NS, LONG_LOSING, `a-big-${i}`, BIG);
      await signal(b, NS, LONG_LOSING, "b-split", LONG_LOSING);
      await signal(b, PREFIX_NS, "grown-on-b", "b-split", "grown-on-b");
      await signal(a, LOSER_FIRST_NS, "loser-first", "a-split", "loser-first");
      await signal(b, LOSER_FIRST_NS, "loser-first", "b-split", "loser-first");

      // The split's replication tasks are lost on both sides (as when a remote was removed and
      // its tasks cleaned up): only a backfill can bring what the other side wrote. A restart
      // drops the tasks the servers still held in memory.
      for (const x of [a, b]) await x.server.database.db.execute(sql`delete from replication_tasks`);
      a = await restart(a, 1);
      b = await restart(b, 2);
      await setLink(a, b, true);
      await Promise.all([a, b].map((x) => expectActiveOn(x, NS, "clusterB", 2n)));
    });
    afterAll(async () => {
      await Promise.all([a, b].map((x) => x?.destroy()));
      for (const x of stopped) await x.destroy();
    });


    /** Why x's run is not as expected, with its branches and both DLQs (for failure messages). */
    async function context(x: TestCluster, workflowId: string): Promise<string> {
      return [...(await branchLines(x, NS, workflowId)), ...(await dlqLines(a)), ...(await dlqLines(b))].join("\n");
    }

    test("TestBackfillOfARunHeldAsAPrefixFetchesOnlyTheEventsItLacks", async () => {
      const before = rawHistoryCalls(b);
      expect((await tern(a, "operator", "namespace", "backfill", PREFIX_NS, "--from", "clusterB")).code).toBe(0);
      await backfillDone(a, PREFIX_NS, "clusterB");
      const events = await historyOf(a, PREFIX_NS, "grown-on-b", prefixRun);
      expect(firstDifference(events, await historyOf(b, PREFIX_NS, "grown-on-b", prefixRun))).toBeUndefined();
      expect(events.map((e) => Number(e.version))).toEqual([1, 1, 1, 1, 1, 1, 2]);
      // Its 5 MB prefix spans two 4 MiB pages: one call brought the one event A lacked.
      expect(rawHistoryCalls(b) - before).toBe(1);
      await expectNoDifference([a, b], PREFIX_NS);
    });

    test("TestBackfillIntoTheHigherVersionKeepsItsBranchAndTakesTheLosingOne", async () => {
      expect((await tern(b, "operator", "namespace", "backfill", NS, "--from", "clusterA")).code).toBe(0);
      await backfillDone(b, NS, "clusterA");
      // B is active: A's acknowledged signals land once on B's branch, which stays current.
      await eventually(async () => {
        const wrong: string[] = [];
        for (const id of SIGNALLED) {
          const events = await historyOf(b, NS, id);
          const first = events[FORK]!;
          if (first.version !== 2n || first.eventType !== EventType.WORKFLOW_EXECUTION_SIGNALED) wrong.push(`${id}: event ${FORK + 1} is not B's`);
          const counts = signalCounts(events);
          for (const key of acked.get(id)!) if (counts.get(key) !== 1) wrong.push(`${id}: ${key.slice(0, 60)} appears ${counts.get(key) ?? 0} times\n${await context(b, id)}`);
          wrong.push(...(await versionBreachesOn(b, NS, id)));
        }
        expect(wrong).toEqual([]);
      }, { timeout: 20_000 });
      // Every branch A wrote is kept on B, completes included.
      for (const id of ALL) {
        const res = await binary(b, AdminService).listHistoryBranches({ namespace: NS, workflowId: id });
        const lost = res.branches.find((br) => !br.current && br.events.some((e) => e.eventId > BigInt(FORK) && e.version === 1n));
        expect([id, lost?.forkEventId]).toEqual([id, BigInt(FORK)]);
      }
      expect((await wf(b).describeWorkflowExecution({ namespace: NS, execution: { workflowId: LONG } })).workflowExecutionInfo!.historyLength).toBe(BigInt(FORK + LONG_SIGNALS));
      // A's large branch came a page at a time and is kept whole, each event once.
      const kept = (await binary(b, AdminService).listHistoryBranches({ namespace: NS, workflowId: LONG_LOSING })).branches.find((br) => !br.current)!;
      expect(kept.events.slice(FORK).map((e) => [Number(e.eventId), Number(e.version)])).toEqual(Array.from({ length: LOSING_SIGNALS }, (_, i) => [FORK + 1 + i, 1]));
    });

    test("TestBackfillIntoTheLowerVersionConvergesOnTheHigherBranch", async () => {
      expect((await tern(a, "operator", "namespace", "backfill", NS, "--from", "clusterB")).code).toBe(0);
      await backfillDone(a, NS, "clusterB");
      await eventually(async () => {
        await expectNoDifference([a, b], NS);
        const verified = await tern(a, "replication", "verify", "-n", NS, "--cluster", "clusterB");
        expect([verified.code, verified.out]).toEqual([0, expect.stringContaining("histories are identical")]);
      }, { timeout: 30_000 }).catch(async (e) => {
        throw new Error(`clusters did not converge: ${(e as Error).message}\n${(await Promise.all(ALL.map((id) => context(a, id)))).join("\n")}`);
      });
      const wrong: string[] = [];
      for (const id of ALL) {
        const [onA, onB, described] = await Promise.all([
          historyOf(a, NS, id),
          historyOf(b, NS, id),
          wf(a).describeWorkflowExecution({ namespace: NS, execution: { workflowId: id } }),
        ]);
        const differs = firstDifference(onA, onB);
        if (differs) wrong.push(`${id}: ${differs}`);
        // Every acknowledged signal of either side once, ids 1, 2, 3..., versions never decreasing.
        const counts = signalCounts(onA);
        for (const key of acked.get(id)!) if (counts.get(key) !== 1) wrong.push(`${id}: ${key.slice(0, 60)} appears ${counts.get(key) ?? 0} times on A`);
        wrong.push(...versionBreaches(onA, described.versionHistory).map((br) => `${id} on A: ${br}`));
      }
      expect(wrong).toEqual([]);
      // A's completes lost: the runs are open on B's branch, with every large signal once.
      for (const id of [CLOSED_EQUAL, LONG]) {
        const info = (await wf(a).describeWorkflowExecution({ namespace: NS, execution: { workflowId: id } })).workflowExecutionInfo!;
        expect([id, info.status]).toEqual([id, WorkflowExecutionStatus.RUNNING]);
      }
      const long = signalCounts(await historyOf(a, NS, LONG));
      for (let i = 0; i < LONG_SIGNALS; i++) expect(long.get(signalKey(`b-big-${i}`, BIG))).toBe(1);
    });

    test("TestSignalsOfTheLosingBranchReachTheWinnerWhenTheLoserConvergedFirst", async () => {
      // A takes B's branch first: its own, with the signal it acknowledged, is now a kept branch.
      expect((await tern(a, "operator", "namespace", "backfill", LOSER_FIRST_NS, "--from", "clusterB")).code).toBe(0);
      await backfillDone(a, LOSER_FIRST_NS, "clusterB");
      expect((await historyOf(a, LOSER_FIRST_NS, "loser-first")).map((e) => Number(e.version))).toEqual([1, 1, 2]);
      // B (active) must still get A's losing branch, and re-apply its signal once.
      expect((await tern(b, "operator", "namespace", "backfill", LOSER_FIRST_NS, "--from", "clusterA")).code).toBe(0);
      await backfillDone(b, LOSER_FIRST_NS, "clusterA");
      await eventually(async () => {
        const wrong: string[] = [];
        for (const x of [a, b]) {
          const counts = signalCounts(await historyOf(x, LOSER_FIRST_NS, "loser-first"));
          for (const key of acked.get("loser-first")!) if (counts.get(key) !== 1) wrong.push(`${x.name}: ${key} appears ${counts.get(key) ?? 0} times`);
          wrong.push(...(await versionBreachesOn(x, LOSER_FIRST_NS, "loser-first")));
        }
        expect(wrong).toEqual([]);
        await expectNoDifference([a, b], LOSER_FIRST_NS);
      }, { timeout: 20_000 }).catch(async (e) => {
        const branches = [...(await branchLines(a, LOSER_FIRST_NS, "loser-first")), ...(await branchLines(b, LOSER_FIRST_NS, "loser-first"))];
        throw new Error(`${(e as Error).message}\n${branches.join("\n")}`);
      });
    });
  });
}
