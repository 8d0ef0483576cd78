import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { eq } from "drizzle-orm";
import { outboundAcks } from "../../replication/ack-levels";
import type { HistoryApplier } from "../../replication/applier";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { executions, replicationDlq } from "../../src/persistence/schema";
import { PayloadsSchema } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { describeOn, eventuallyOn } from "../failover/mesh";
import { runCli } from "../cli/harness";
import { eventually } from "../support/eventually";
import { startHttpLinkedPair, startLinkedPair } from "../support/linked-pair";
import type { TestCluster, TestClusterOptions } from "../support/server";
import { testStores, type StoreKind } from "../support/stores";
import type { TcpProxy } from "../support/tcp-proxy";
import { expectSameHistories, historiesOf, lastTaskIds } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";
type Line = { level: string; msg: string; error?: string };

/** A pair whose B reaches A through a proxy (startLinkedPair), for a describe; B's log lines kept. */
function useLinkedPair(store: StoreKind, options: [Partial<TestClusterOptions>, Partial<TestClusterOptions>]) {
  const pair = {} as { a: TestCluster; b: TestCluster; link: TcpProxy; nsId: string; bLog: Line[]; close(): Promise<void> };
  beforeAll(async () => {
    const bLog: Line[] = [];
    const log = createLogger({ level: "info", write: (line) => bLog.push(JSON.parse(line)) });
    const [a, b] = options;
    Object.assign(pair, { bLog }, await startLinkedPair(store, [a, { ...b, serverOptions: { log, ...b.serverOptions } }]));
  });
  afterAll(() => pair.close());
  return pair;
}

const start = (x: TestCluster, workflowId: string) => x.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId, workflowType: "T", taskQueue: "q" });
/** x's replication status of its one remote. */
const statusOf = async (x: TestCluster) => (await x.client(AdminService).getReplicationStatus({})).remotes[0]!;
/** How many of its tasks x's remote has not acked, over all shards. */
const outboundLag = async (x: TestCluster) => (await statusOf(x)).outbound.reduce((n, s) => n + Number(s.lagTasks), 0);
/** Each shard's last task on a, and what b acked of it there. */
const ackedAll = async (a: TestCluster) => {
  const [max, acks] = await Promise.all([lastTaskIds(a), outboundAcks(a.server.database.db, "clusterB")]);
  expect([...max].map(([shard]) => acks.get(shard) ?? 0)).toEqual([...max.values()]);
};

/**
 * An applier for B that sees run "gap"'s signal (event 2) arrive without its event, as after a
 * lost task, and repairs it from A's raw history; onFetch's fault runs as the apply first asks for the gap.
 */
function gapInRun() {
  const gap = {
    before: () => {},
    onFetch(fault: () => void) {
      gap.before = () => ((gap.before = () => {}), fault());
    },
    fetches: 0,
    wrap: (inner: HistoryApplier): HistoryApplier => ({
      ...inner,
      planApply: (ns, task, reads) => (task.workflowId === "gap" ? undefined : inner.planApply(ns, task, reads)),
      applyTask(tx, ns, task, fetchRaw) {
        const lost = task.workflowId === "gap" && task.firstEventId === 2 ? { ...task, firstEventId: 3, events: task.events.filter((e) => e.eventId !== 2n) } : task;
        return inner.applyTask(tx, ns, lost, (...args) => (gap.fetches++, gap.before(), fetchRaw(...args)));
      },
    }),
  };
  return gap;
}

/** Locks workflowId's run row on x in a transaction of its own, failing at once if another holds it (or within 1 s if it waits). */
async function lockRunNow(x: TestCluster, workflowId: string): Promise<void> {
  const locked = x.server.database.db.transaction((tx) => tx.select().from(executions).where(eq(executions.workflowId, workflowId)).for("update", { noWait: true }));
  const late = new Promise((_, reject) => setTimeout(() => reject(new Error(`the run ${workflowId} could not be locked within 1 s`)), 1_000));
  await Promise.race([locked, late]);
}

for (const store of await testStores()) {
  describe(`a replication link that drops packets, on ${store}`, () => {
    // B hears from A at least every 300 ms; A is overdue at 2.3 s and given up at 5.3 s of silence (the default grace).
    const pair = useLinkedPair(store, [{}, { serverOptions: { replication: { waitMs: 300 } } }]);

    test("TestABlackHoledLinkShowsAsOverdueThenFailedOnB, and B catches up exactly once when it returns", async () => {
      const { a, b, link, nsId } = pair;
      await start(a, "before");
      await eventually(() => expectSameHistories(a, b, nsId));
      await eventually(async () => expect((await statusOf(b)).connectionState).toBe("connected"));

      link.hold(true);
      try {
        for (let i = 0; i < 5; i++) await start(a, `held-${i}`);
        // B says so before it gives the stream up, not "connected" until then.
        await eventually(
          async () => expect((await statusOf(b)).connectionState).toBe("error: cluster clusterA has sent nothing on its replication stream for 2300 ms (it sends at least every 300 ms)"),
          { timeout: 10_000 },
        );
        await eventually(async () => expect((await statusOf(b)).connectionState).toContain("sent nothing on its replication stream for 5300 ms"), { timeout: 10_000 });
        // A knows B is behind; B cannot see what A wrote, so its inbound lag is unknown (as of when it last heard A), not 0.
        expect(await outboundLag(a)).toBeGreaterThan(0);
        const unheard = await statusOf(b);
        expect(unheard.inboundLagUnknown).toBe(true);
        expect(Date.now() - timestampDate(unheard.inboundHeardAt!).getTime()).toBeGreaterThanOrEqual(5_000);
        expect((await historiesOf(b, nsId)).some((e) => e.workflowId.startsWith("held-"))).toBe(false);
      } finally {
        link.hold(false);
      }
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      await eventually(async () => expect((await statusOf(b)).connectionState).toBe("connected"));
      await eventually(() => ackedAll(a));
      expect((await statusOf(b)).dlqSize).toBe(0n);
      expect((await statusOf(b)).inboundLagUnknown).toBe(false);
    });
  });

  describe(`a replication link cut off, on ${store}`, () => {
    // B hears from A at least every 300 ms: A's inbound lag is unknown on B 2.3 s after it last did.
    const pair = useLinkedPair(store, [{}, { serverOptions: { replication: { waitMs: 300 } } }]);

    test("TestNamespaceReplicationLagOfASourceCutOffIsUnknownOnBLikeItsShards, and known again once the link returns", async () => {
      const { a, b, link } = pair;
      await a.client(WorkflowService).updateNamespace({ namespace: NS, description: "v1" });
      await eventuallyOn(b, NS, (ns) => expect(ns.namespaceInfo!.description).toBe("v1"));
      await eventually(async () => expect((await statusOf(b)).inboundLagUnknown).toBe(false));
      const heard = await statusOf(b);

      link.refuse(true);
      link.cut();
      try {
        // A namespace task B cannot see: B's own numbers still say it applied all it knows of.
        await a.client(WorkflowService).updateNamespace({ namespace: NS, description: "v2" });
        await eventually(async () => expect((await statusOf(b)).inboundLagUnknown).toBe(true), { timeout: 10_000 });
        const res = await b.client(AdminService).getReplicationStatus({});
        expect(res.remotes[0]!.namespaceAckedTaskId).toBe(heard.namespaceAckedTaskId);
        const text = (await runCli(["replication", "status"], { admin: { getReplicationStatus: () => res } })).stdout;
        expect(text).toMatch(/^clusterA +inbound +ns +\d+ +\d+ +unknown +- +error: /m);
        expect(text).toMatch(/^clusterA +inbound +1 +\d+ +\d+ +unknown +unknown +error: /m);
        const json = JSON.parse((await runCli(["replication", "status", "-o", "json"], { admin: { getReplicationStatus: () => res } })).stdout);
        expect(json.remotes[0].namespaceLagTasks).toBeNull();
        expect(json.remotes[0].inbound[0].lagTasks).toBeNull();
      } finally {
        link.refuse(false);
      }
      await eventuallyOn(b, NS, (ns) => expect(ns.namespaceInfo!.description).toBe("v2"), 20_000);
      await eventually(async () => {
        const res = await b.client(AdminService).getReplicationStatus({});
        expect(res.remotes[0]!.inboundLagUnknown).toBe(false);
        const text = (await runCli(["replication", "status"], { admin: { getReplicationStatus: () => res } })).stdout;
        expect(text).toMatch(/^clusterA +inbound +ns +(\d+) +\1 +0 +- +connected$/m);
      }, { timeout: 20_000 });
    });
  });

  // The pull path: a source that refuses StreamReplicationTasks (a tern before it) is pulled, for reprobeMs (60 s) after each refusal.
  for (const path of ["stream", "pull"] as const) describe(`a source that refuses connections, heard at least every 30 s, on its ${path} path, on ${store}`, () => {
    // Overdue only 32 s after B last heard A: the failing stream alone can say A's lag is unknown sooner.
    const pair = useLinkedPair(store, [path === "pull" ? { serverOptions: { replication: { serveStream: () => false } } } : {}, { serverOptions: { replication: { waitMs: 30_000 } } }]);

    test(`TestASourceRefusingConnectionsIsUnknownOnBAsSoonAsItsStreamFails on the ${path} path, with why, and known again at its next answer`, async () => {
      const { a, b, link, bLog } = pair;
      const pulling = () => bLog.some((l) => l.msg === "remote cluster does not serve StreamReplicationTasks (a tern before it); pulling its tasks a call at a time");
      const lagShown = () => /^replication_tasks_lag\{remote_cluster="clusterA"/m.test(b.server.metrics.render());
      await start(a, "before-refused");
      await eventually(async () => {
        expect((await statusOf(b)).inboundLagUnknown).toBe(false);
        expect(lagShown()).toBe(true);
      });
      expect(pulling()).toBe(path === "pull");
      link.refuse(true);
      link.cut();
      try {
        // Before: unknown (and the gauge hidden) only once A was overdue, 32 s after B last heard it.
        await eventually(async () => expect((await statusOf(b)).inboundLagUnknown).toBe(true), { timeout: 15_000 });
        const res = await b.client(AdminService).getReplicationStatus({});
        const why = res.remotes[0]!.inboundError;
        expect(why).not.toBe("");
        expect(lagShown()).toBe(false);
        const text = (await runCli(["replication", "status"], { admin: { getReplicationStatus: () => res } })).stdout;
        expect(text).toContain(`: ${why}; its inbound lag is unknown`);
      } finally {
        link.refuse(false);
      }
      await eventually(async () => {
        expect(await statusOf(b)).toMatchObject({ inboundLagUnknown: false, inboundError: "" });
        expect(lagShown()).toBe(true);
      }, { timeout: 15_000 });
    });
  });

  describe(`a link whose route to the source's namespace queue fails while history passes, on ${store}`, () => {
    // B hears A's history stream at least every 300 ms: its inbound lag would be unknown 2.3 s after it last did.
    const pair = {} as Awaited<ReturnType<typeof startHttpLinkedPair>>;
    beforeAll(async () => Object.assign(pair, await startHttpLinkedPair(store, [{}, { serverOptions: { replication: { waitMs: 300 } } }])));
    afterAll(() => pair.close());

    test("TestNamespaceLagIsUnknownOnBWhileItsPollsOfAFailAndHistoryFlows, with the polls' error, and known again once they answer", async () => {
      const { a, b, link, nsId } = pair;
      await a.client(WorkflowService).updateNamespace({ namespace: NS, description: "v1" });
      await eventuallyOn(b, NS, (ns) => expect(ns.namespaceInfo!.description).toBe("v1"));
      await eventually(async () => expect((await statusOf(b)).namespaceLagUnknown).toBe(false));

      link.failPaths((path) => path.endsWith("/GetNamespaceReplicationTasks"));
      try {
        // A namespace change B cannot see, and a write B does see.
        await a.client(WorkflowService).updateNamespace({ namespace: NS, description: "v2" });
        await start(a, "while-namespaces-fail");
        await eventually(() => expectSameHistories(a, b, nsId));
        await eventually(async () => expect((await statusOf(b)).namespaceLagUnknown).toBe(true), { timeout: 10_000 });
        const res = await b.client(AdminService).getReplicationStatus({});
        const remote = res.remotes[0]!;
        expect(remote.inboundLagUnknown).toBe(false);
        expect(remote.namespaceError).toBe("unavailable: HTTP 502");
        expect(Date.now() - timestampDate(remote.namespaceHeardAt!).getTime()).toBeGreaterThanOrEqual(2_300);
        expect((await describeOn(b, NS)).namespaceInfo!.description).toBe("v1");
        const text = (await runCli(["replication", "status"], { admin: { getReplicationStatus: () => res } })).stdout;
        expect(text).toMatch(/^clusterA +inbound +ns +\d+ +\d+ +unknown +- +error: /m);
        expect(text).toMatch(/^clusterA +inbound +1 +\d+ +\d+ +\d+ +\d+ +error: /m);
        expect(text).toContain("NOTE: clusterB's namespace replication from clusterA has had no answer since ");
        expect(text).toContain("unavailable: HTTP 502; its ns lag is unknown");
        const json = JSON.parse((await runCli(["replication", "status", "-o", "json"], { admin: { getReplicationStatus: () => res } })).stdout);
        expect(json.remotes[0].namespaceLagTasks).toBeNull();
        expect(json.remotes[0].inbound[0].lagTasks).not.toBeNull();
      } finally {
        link.failPaths(undefined);
      }
      await eventuallyOn(b, NS, (ns) => expect(ns.namespaceInfo!.description).toBe("v2"), 20_000);
      await eventually(async () => {
        const res = await b.client(AdminService).getReplicationStatus({});
        expect(res.remotes[0]!.namespaceLagUnknown).toBe(false);
        expect(res.remotes[0]!.namespaceError).toBe("");
        const text = (await runCli(["replication", "status"], { admin: { getReplicationStatus: () => res } })).stdout;
        expect(text).toMatch(/^clusterA +inbound +ns +(\d+) +\1 +0 +- +connected$/m);
        expect(text).not.toContain("NOTE");
      }, { timeout: 20_000 });
    });
  });

  describe(`a replication link that drops what B sends, on ${store}`, () => {
    // B's acks are given up after 2 s without an answer (the grace of a silent stream).
    const pair = useLinkedPair(store, [{}, { serverOptions: { replication: { waitMs: 300, silenceGraceMs: 2_000 } } }]);

    test("TestAcksThatDoNotReachTheSourceShowAsTheConnectionsErrorOnB, while B applies what comes", async () => {
      const { a, b, link, nsId } = pair;
      await start(a, "before");
      await eventually(() => expectSameHistories(a, b, nsId));

      // A's messages reach B; nothing B sends reaches A.
      link.stall("toServer", true);
      try {
        for (let i = 0; i < 5; i++) await start(a, `unacked-${i}`);
        await eventually(() => expectSameHistories(a, b, nsId));
        await eventually(
          async () => expect((await statusOf(b)).connectionState).toBe(
            "error: acks to cluster clusterA failed, so it does not hear what was applied: deadline_exceeded: the operation timed out",
          ),
          { timeout: 10_000 },
        );
        expect(await outboundLag(a)).toBeGreaterThan(0);
      } finally {
        link.stall("toServer", false);
      }
      await eventually(() => ackedAll(a), { timeout: 15_000 });
      await eventually(async () => expect((await statusOf(b)).connectionState).toBe("connected"));
    });
  });

  describe(`a replication link cut again and again, on ${store}`, () => {
    const pair = useLinkedPair(store, [{}, {}]);

    test("TestEveryWriteAReachesBExactlyOnceThroughCutsEvery200Ms, with no DLQ entry and a few log lines", async () => {
      const { a, b, link, nsId, bLog } = pair;
      const wf = a.client(WorkflowService);
      for (let i = 0; i < 8; i++) await start(a, `c-${i}`);
      let acked = 0;
      let writing = true;
      const writers = Array.from({ length: 4 }, async (_, k) => {
        for (let i = 0; writing; i++) {
          await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: `c-${(k + i) % 8}` }, signalName: "s", requestId: `c-${k}-${i}` });
          acked++;
        }
      });
      let cuts = 0;
      const cutter = setInterval(() => (link.cut(), cuts++), 200);
      try {
        await eventually(() => expect(cuts).toBeGreaterThanOrEqual(25), { timeout: 20_000 });
      } finally {
        clearInterval(cutter);
        writing = false;
        await Promise.all(writers);
      }
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 30_000, interval: 100 });
      const signals = (await historiesOf(a, nsId)).filter((e) => e.eventType === "WORKFLOW_EXECUTION_SIGNALED");
      expect(signals.length).toBe(acked);
      expect(await b.server.database.db.select().from(replicationDlq)).toEqual([]);
      await eventually(() => ackedAll(a));
      // About 25 failures and recoveries per stream: said once each (per 10 s), not one line per cut.
      const said = (msg: string) => bLog.filter((l) => l.msg === msg).length;
      expect(said("replication stream failed")).toBeLessThanOrEqual(4);
      expect(said("replication stream recovered")).toBeLessThanOrEqual(4);
    });
  });

  describe(`a replication link whose receiving end stops reading, on ${store}`, () => {
    let produced = 0;
    const pair = useLinkedPair(store, [{ serverOptions: { replication: { beforeStreamMessage: async () => void produced++ } } }, {}]);

    test("TestASourceWhosePeerStopsReadingProducesNoMoreThanTheLinkHolds, and the peer catches up once it reads", async () => {
      const { a, b, link, nsId } = pair;
      const wf = a.client(WorkflowService);
      await start(a, "big");
      await eventually(() => expectSameHistories(a, b, nsId));
      const data = new Uint8Array(256 << 10);
      for (let at = 0; at < data.length; at += 65_536) crypto.getRandomValues(data.subarray(at, at + 65_536));
      const input = create(PayloadsSchema, { payloads: [{ metadata: {}, data }] });

      link.stall("toClient", true);
      const before = produced;
      try {
        // 25 MB, a message a commit: the stream's messages wait for the link (about 17 of them here), not in A's memory.
        for (let i = 0; i < 100; i++) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "big" }, signalName: `part-${i}`, input });
        expect(produced - before).toBeLessThan(50);
      } finally {
        link.stall("toClient", false);
      }
      // Waits on B's run row, not on whole histories: reading 25 MB from both stores at each
      // poll took the (single, on PGlite) thread from the catch-up it waits for.
      const nextEventId = async (x: TestCluster) => (await x.server.database.db.select({ n: executions.nextEventId }).from(executions).where(eq(executions.workflowId, "big")))[0]?.n;
      const last = await nextEventId(a);
      await eventually(async () => expect(await nextEventId(b)).toBe(last), { timeout: 60_000, interval: 200 });
      await expectSameHistories(a, b, nsId);
    });
  });

  describe(`a gap repair whose source the link cuts off, on ${store}`, () => {
    const gap = gapInRun();
    // A task is retried twice before it goes to the DLQ.
    const pair = useLinkedPair(store, [{}, { serverOptions: { replication: { wrapApplier: gap.wrap, retry: { attempts: 2, backoffMs: 10 } } } }]);

    test("TestAGapRepairThatCannotReachTheSourceRetriesUntilItCan, and sends nothing to the DLQ", async () => {
      const { a, b, link, nsId } = pair;
      await start(a, "gap");
      await eventually(() => expectSameHistories(a, b, nsId));
      // The link goes down (connections reset, new ones refused, as with A restarting) as B fetches the gap.
      gap.onFetch(() => (link.refuse(true), link.cut()));
      try {
        await a.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "gap" }, signalName: "s" });
        await eventually(() => expect(gap.fetches).toBeGreaterThanOrEqual(1));
        // B tries the link again and again: past the task's retry budget, were it the task's fault.
        await eventually(() => expect(link.refused).toBeGreaterThanOrEqual(3), { timeout: 15_000 });
      } finally {
        link.refuse(false);
      }
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 15_000 });
      expect(await b.server.database.db.select().from(replicationDlq)).toEqual([]);
    });
  });

  describe(`a gap repair whose source the link black-holes, on ${store}`, () => {
    const gap = gapInRun();
    const pair = useLinkedPair(store, [{}, { serverOptions: { replication: { wrapApplier: gap.wrap } } }]);

    test("TestAGapRepairWaitingOnABlackHoledLinkHoldsNoTransactionOnB, and B applies it once the link returns", async () => {
      const { a, b, link, nsId } = pair;
      await start(a, "gap");
      await eventually(() => expectSameHistories(a, b, nsId));
      // The link drops every packet as B comes to fetch the gap: the fetch waits (up to its 30 s timeout).
      gap.onFetch(() => link.hold(true));
      try {
        await a.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "gap" }, signalName: "s" });
        await eventually(() => expect(gap.fetches).toBeGreaterThanOrEqual(1));
        // Meanwhile B's apply holds neither the run's row nor (on PGlite, one transaction at a time) the database.
        await eventually(() => lockRunNow(b, "gap"), { timeout: 5_000 });
        expect((await historiesOf(b, nsId)).filter((e) => e.workflowId === "gap").map((e) => e.eventId)).toEqual([1]);
      } finally {
        link.hold(false);
      }
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 40_000 });
      expect(await b.server.database.db.select().from(replicationDlq)).toEqual([]);
    });
  });
}
