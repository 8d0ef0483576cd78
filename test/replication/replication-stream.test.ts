import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { outboundAcks } from "../../replication/ack-levels";
import { createOutboxMarks } from "../../replication/outbox";
import { FIRST_STREAM_PAGE, MAX_SHARD_PAGE } from "../../replication/pull-budget";
import { createReplicationSender } from "../../replication/sender";
import { AdminService, StreamReplicationTasksRequestSchema, type StreamReplicationTasksResponse } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createEventNotifier } from "../../src/history/notifier";
import { shardFor } from "../../src/history/shard";
import { createLogger } from "../../src/observability/log";
import { parseCounter } from "../../bench/lib/prom-histogram";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { createGate } from "../support/gate";
import { rejects } from "../support/rejects";
import type { TestCluster, TestClusterOptions } from "../support/server";
import { testStores, type StoreKind } from "../support/stores";
import { addr, globalNamespace, historiesOf, lastTaskIds, notedStatements } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const SHARDS = 4;
const NS = "orders";
const shardIds = [1, 2, 3, 4];

const start = (x: TestCluster, workflowId: string) =>
  x.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId, workflowType: "T", taskQueue: "q" });

/** How many tasks x's stream from `from` has read and not applied (a gauge). */
const receivedOf = (x: TestCluster, from: string) => parseCounter(x.server.metrics.render(), "replication_stream_received_tasks", { remote_cluster: from });

/** The sum of x's counter `name` over the series of operation op. */
const counted = (x: TestCluster, name: string, op: string) => parseCounter(x.server.metrics.render(), name, { operation: op });

/**
 * Clusters A and B on store with a global namespace: A connected to B first, then the
 * namespace, then B to A, so B's receiver starts with the namespace in place.
 */
async function replicatingPair(store: StoreKind, options: [Partial<TestClusterOptions>, Partial<TestClusterOptions>]) {
  const [a, b] = await startClusters(store, [{ shards: SHARDS, ...options[0] }, { shards: SHARDS, ...options[1] }]);
  await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
  const nsId = await globalNamespace(a, b, NS);
  await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
  return { a, b, nsId };
}

/** Waits until b holds exactly a's histories of the namespace. */
const caughtUp = (a: TestCluster, b: TestCluster, nsId: string, timeout = 15_000) =>
  eventually(async () => expect(await historiesOf(b, nsId)).toEqual(await historiesOf(a, nsId)), { timeout });

for (const store of await testStores()) {
  describe(`StreamReplicationTasks on ${store}: one open answer, the cursors moved on by the source`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    const admin = () => a.client(AdminService);
    /** A stream in clusterB's name from `after` (and acked there), read by hand; end() closes it. */
    const open = (after: bigint[], waitTimeoutMs: number, acked = after) => {
      const stop = new AbortController();
      const it = admin()
        .streamReplicationTasks({ clusterName: "clusterB", cursors: { shardIds, afterTaskIds: after, ackedTaskIds: acked }, waitTimeoutMs }, { signal: stop.signal })
        [Symbol.asyncIterator]();
      const next = async () => {
        const r = await it.next();
        if (r.done) throw new Error("the stream ended");
        return { res: r.value as StreamReplicationTasksResponse, at: performance.now() };
      };
      return { next, end: () => stop.abort() };
    };

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, {}]);
      // One way only: clusterB does not pull, the test streams in its name.
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      nsId = await globalNamespace(a, b, NS);
      for (let i = 0; i < 6; i++) await start(a, `w-${i}`);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("AnswersAtOnce, then each commit as it comes after the last page sent, then news of nothing after the wait", async () => {
      // The wait is long beside a loaded host's stalls: each answer is timed on this side, after
      // its delivery, while the server times its wait from its send (a 400 ms wait once saw the
      // empty answer 341 ms after the one before it, under load).
      const WAIT_MS = 3_000;
      const s = open(shardIds.map(() => 0n), WAIT_MS);
      try {
        const opened = performance.now();
        const first = await s.next();
        expect(first.at - opened).toBeLessThan(WAIT_MS / 2);
        // Every task so far, each shard's page ending at its max.
        expect(first.res.shards.flatMap((p) => p.tasks.map((t) => t.workflowId)).sort()).toEqual([0, 1, 2, 3, 4, 5].map((i) => `w-${i}`));
        for (const p of first.res.shards) expect(p.lastTaskId).toBe(p.maxTaskId);
        const lastOf = new Map(first.res.shards.map((p) => [p.shardId, p.lastTaskId]));

        // A commit: only its shard, only its task, starting after the page before (before the
        // wait ends: an answer after it would have no shards).
        const asked = performance.now();
        await start(a, "later");
        const second = await s.next();
        expect(second.at - asked).toBeLessThan(WAIT_MS / 2);
        const shardId = shardFor(nsId, "later", SHARDS);
        expect(second.res.shards.map((p) => [p.shardId, p.tasks.map((t) => t.workflowId)])).toEqual([[shardId, ["later"]]]);
        const task = second.res.shards[0]!.tasks[0]!;
        expect(task.taskId).toBeGreaterThan(lastOf.get(shardId) ?? 0n);

        // Nothing new: an answer without shards once the wait ends, so the peer knows the stream lives.
        // The server sent the second answer after `asked` and waits from then on: the whole wait lies
        // between; from the second's arrival at least most of it (what the delivery took is not).
        const third = await s.next();
        expect(third.res.shards).toEqual([]);
        expect(third.at - asked).toBeGreaterThanOrEqual(WAIT_MS - 10);
        expect(third.at - second.at).toBeGreaterThanOrEqual(WAIT_MS / 2);
      } finally {
        s.end();
      }
    });

    test("CountsTheStreamsItServes, and lets go of each once the peer ends it (its shard watch: the test after)", async () => {
      const served = () => parseCounter(a.server.metrics.render(), "replication_streams_served", { remote_cluster: "clusterB" });
      // The test before ended its stream: the source lets go of it a moment later.
      await eventually(() => expect(served()).toBe(0));
      const s = open(shardIds.map(() => 0n), 10_000);
      const t = open(shardIds.map(() => 0n), 10_000);
      try {
        await Promise.all([s.next(), t.next()]);
        expect(served()).toBe(2);
        s.end();
        await eventually(() => expect(served()).toBe(1));
      } finally {
        s.end();
        t.end();
      }
      await eventually(() => expect(served()).toBe(0));
    });

    test("CountsOnlyTheStreamsOfAConnectedPeer: a stream in any other name is refused and leaves no series in /metrics", async () => {
      const names = ["clusterZ", "made-up-1", "made-up-2"];
      for (const clusterName of names) {
        const first = admin().streamReplicationTasks({ clusterName, cursors: { shardIds, afterTaskIds: shardIds.map(() => 0n), ackedTaskIds: shardIds.map(() => 0n) } })[Symbol.asyncIterator]().next();
        await rejects(first, Code.FailedPrecondition, `cluster ${clusterName} is not connected`);
      }
      // Each had a series of its own (0 once refused), one per name a caller sends.
      const series = a.server.metrics.render().split("\n").filter((l) => l.startsWith("replication_streams_served{"));
      expect(series.filter((l) => names.some((n) => l.includes(`"${n}"`)))).toEqual([]);
    });

    test("ClosesItsShardWatchOnceTheStreamEnds: aborted while it waits, or dropped by its reader", async () => {
      // A sender of its own on A's database, with marks the test holds: each stream it serves
      // watches them for the shards that move, and must stop once the stream is over (the
      // marks notify every open watch of every commit from then on).
      const marks = createOutboxMarks();
      const sender = createReplicationSender({ db: a.server.database.db, cluster: a.server.cluster, notifier: createEventNotifier(), outboxMarks: marks });
      const req = create(StreamReplicationTasksRequestSchema, {
        clusterName: "clusterB", cursors: { shardIds, afterTaskIds: shardIds.map(() => 0n), ackedTaskIds: shardIds.map(() => 0n) }, waitTimeoutMs: 30_000,
      });

      try {
        const waiting = new AbortController();
        const s = sender.streamReplicationTasks(req, waiting.signal);
        const first = await s.next();
        expect(first.done).toBe(false);
        expect(marks.watching()).toBe(1);
        // The next answer waits for a commit (30 s); the peer ends the call meanwhile.
        const next = s.next();
        waiting.abort();
        await next.catch(() => undefined);
        expect(marks.watching()).toBe(0);

        const t = sender.streamReplicationTasks(req, new AbortController().signal);
        await t.next();
        expect(marks.watching()).toBe(1);
        await t.return(undefined);
        expect(marks.watching()).toBe(0);
      } finally {
        await sender.stop();
      }
    });

    test("RereadsAnIdleStreamsShardsOnlyOnceACounterMoved: one row per re-read while idle, and a commit another process made still comes", async () => {
      // A sender of its own on A's database, re-reading every 50 ms, whose marks and notifier
      // hear nothing of A's commits: to it they are another process's. The statements it runs are
      // noted, with their rows: while idle, each re-read is one row, never a page or counter read
      // of each shard (before: every shard's, at each re-read); on PGlite, whose instance nothing
      // else writes to, the re-reads after the first do not even sum the counters (the snapshot
      // is the one they held at).
      const { db: watched, ran } = notedStatements(a.server.database.db);
      const sender = createReplicationSender({ db: watched, cluster: a.server.cluster, notifier: createEventNotifier(), outboxMarks: createOutboxMarks(), recheckMs: 50 });
      const last = await lastTaskIds(a);
      const after = shardIds.map((id) => BigInt(last.get(id) ?? 0));
      const req = create(StreamReplicationTasksRequestSchema, { clusterName: "clusterB", cursors: { shardIds, afterTaskIds: after, ackedTaskIds: after }, waitTimeoutMs: 30_000 });
      const s = sender.streamReplicationTasks(req, new AbortController().signal);
      try {
        await s.next();
        const next = s.next();
        // The re-read: the peer's flag, and no page or counter of a shard.
        const rereads = (from: number) => ran.slice(from).filter((r) => r.sql.includes("peer_enabled") && !r.sql.includes("page_max"));
        const perShard = (sql: string) => sql.includes("page_max");
        const idleFrom = ran.length;
        await eventually(() => expect(rereads(idleFrom).filter((r) => r.rows).length).toBeGreaterThanOrEqual(5));
        expect(ran.slice(idleFrom).map((r) => r.sql).filter(perShard)).toEqual([]);
        if (store === "pglite") expect(rereads(idleFrom).filter((r) => r.rows?.[0]?.counters === null).length).toBeGreaterThanOrEqual(3);

        await start(a, "after-idle");
        const got = await next;
        const tasks = got.done ? [] : got.value.shards.flatMap((sp) => sp.tasks);
        expect(tasks.map((t) => t.workflowId)).toEqual(["after-idle"]);
      } finally {
        await s.return(undefined);
        await sender.stop();
      }
    });

    test("RecordsTheRequestsAcksOnce, and AckReplicationTasks's after", async () => {
      // The acks below stay within each shard's tasks (the source refuses one past them).
      for (let i = 0; ; i++) {
        const last = await lastTaskIds(a);
        if ((last.get(2) ?? 0) >= 3 && (last.get(3) ?? 0) >= 1) break;
        await start(a, `fill-${i}`);
      }
      // A shard's ack is at most where its stream starts: shard 1's 2 is recorded as 1.
      const s = open([1n, 2n, 0n, 0n], 10_000, [2n, 2n, 0n, 0n]);
      try {
        await s.next();
        await eventually(async () => {
          const acks = await outboundAcks(a.server.database.db, "clusterB");
          expect([acks.get(1), acks.get(2)]).toEqual([1, 2]);
        });
        await admin().ackReplicationTasks({ clusterName: "clusterB", shardIds: [2, 3], ackedTaskIds: [3n, 1n] });
        await eventually(async () => {
          const acks = await outboundAcks(a.server.database.db, "clusterB");
          expect([acks.get(1), acks.get(2), acks.get(3)]).toEqual([1, 3, 1]);
        });
        // A commit moves the stream on without recording the request's acks again.
        await start(a, "after-ack");
        await s.next();
        await Bun.sleep(400); // past the recorder's 250 ms interval, which would have saved them
        const acks = await outboundAcks(a.server.database.db, "clusterB");
        expect([acks.get(1), acks.get(2), acks.get(3)]).toEqual([1, 3, 1]);
      } finally {
        s.end();
      }
    });

    test("RefusesBadAcksAndCursors, and a peer it is not connected to", async () => {
      const ack = (req: { clusterName?: string; shardIds?: number[]; ackedTaskIds?: bigint[] }) =>
        admin().ackReplicationTasks({ clusterName: "clusterB", shardIds: [1], ackedTaskIds: [1n], ...req });
      await rejects(ack({ clusterName: "" }), Code.InvalidArgument, "cluster_name is required");
      await rejects(ack({ shardIds: [1, 2] }), Code.InvalidArgument, "acked_task_ids needs one entry per shard: shard_ids has 2, acked_task_ids 1");
      await rejects(ack({ shardIds: [5] }), Code.InvalidArgument, "shard id must be 1..4, not 5");
      await rejects(ack({ shardIds: [2, 2], ackedTaskIds: [1n, 1n] }), Code.InvalidArgument, "shard 2 is acked twice");
      await rejects(ack({ ackedTaskIds: [-1n] }), Code.InvalidArgument, "must not be negative");
      await rejects(ack({ ackedTaskIds: [2n ** 63n - 1n] }), Code.InvalidArgument, "acked_task_id 9223372036854775807 is out of range");
      // Neither a peer that is not connected nor an ack past the shard's last task is recorded.
      await rejects(ack({ clusterName: "clusterZ" }), Code.FailedPrecondition, "cluster clusterZ is not connected");
      await rejects(ack({ shardIds: [4], ackedTaskIds: [1_000_000n] }), Code.InvalidArgument, "shard 4's acked task id 1000000 is past its last task");
      const first = (req: Parameters<ReturnType<typeof admin>["streamReplicationTasks"]>[0]) =>
        admin().streamReplicationTasks(req)[Symbol.asyncIterator]().next();
      // Nor is a pull's: its ack is at most its cursor, and a cursor past the shard's last task is refused.
      const pastEnd = "shard 4's after_task_id 1000000 is past its last task";
      await rejects(first({ clusterName: "clusterB", cursors: { shardIds: [4], afterTaskIds: [1_000_000n], ackedTaskIds: [1_000_000n] } }), Code.InvalidArgument, pastEnd);
      await rejects(admin().pullReplicationTasks({ clusterName: "clusterB", shards: [{ shardId: 4, afterTaskId: 1_000_000n, ackedTaskId: 1_000_000n }] }), Code.InvalidArgument, pastEnd);
      await rejects(admin().getReplicationTasks({ clusterName: "clusterB", shardId: 4, afterTaskId: 1_000_000n, ackedTaskId: 1_000_000n }), Code.InvalidArgument, pastEnd);
      await Bun.sleep(400); // past the recorder's 250 ms interval, which would have saved them
      expect((await outboundAcks(a.server.database.db, "clusterZ")).size).toBe(0);
      expect((await outboundAcks(a.server.database.db, "clusterB")).get(4)).not.toBe(1_000_000);

      await rejects(first({ clusterName: "clusterB" }), Code.InvalidArgument, "cursors are required");
      await rejects(first({ clusterName: "clusterB", cursors: { shardIds: [1, 2], afterTaskIds: [0n], ackedTaskIds: [0n] } }), Code.InvalidArgument, "cursors needs one entry per shard");
      await rejects(first({ clusterName: "clusterB", cursors: { shardIds: [1, 1], afterTaskIds: [0n, 0n], ackedTaskIds: [0n, 0n] } }), Code.InvalidArgument, "shard 1 is asked for twice");
      await rejects(first({ clusterName: "clusterZ", cursors: { shardIds: [1], afterTaskIds: [0n], ackedTaskIds: [0n] } }), Code.FailedPrecondition, "cluster clusterZ is not connected");
    });

    test("StartsABacklogSmallAndGrowsIt: a shard 300 tasks behind comes 64 tasks first, then twice that each page, in order and none skipped", async () => {
      const wf = a.client(WorkflowService);
      const { runId } = await start(a, "backlog");
      for (let i = 0; i < 300; i++) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "backlog", runId }, signalName: `s${i}` });
      const shardId = shardFor(nsId, "backlog", SHARDS);
      const max = BigInt((await lastTaskIds(a)).get(shardId)!);
      const stop = new AbortController();
      // The peer asks a catch-up page of each shard, as a receiver does.
      const it = admin()
        .streamReplicationTasks(
          { clusterName: "clusterB", cursors: { shardIds, afterTaskIds: shardIds.map(() => 0n), ackedTaskIds: shardIds.map(() => 0n), pageSizes: shardIds.map(() => MAX_SHARD_PAGE) }, waitTimeoutMs: 10_000 },
          { signal: stop.signal },
        )[Symbol.asyncIterator]();
      try {
        const pages: { tasks: bigint[]; last: bigint }[] = [];
        while (pages.at(-1)?.last !== max) {
          const { value } = await it.next();
          const page = (value as StreamReplicationTasksResponse).shards.find((p) => p.shardId === shardId);
          if (page) pages.push({ tasks: page.tasks.map((t) => t.taskId), last: page.lastTaskId });
        }
        // The first message is a small one's, to come and apply at once; the pages after it grow.
        expect(pages.slice(0, 2).map((p) => p.tasks.length)).toEqual([FIRST_STREAM_PAGE, 2 * FIRST_STREAM_PAGE]);
        for (const p of pages.slice(2, -1)) expect(p.tasks.length).toBeGreaterThan(2 * FIRST_STREAM_PAGE);
        // Each page goes on after the one before, up to the shard's last task: its tasks in order, each once.
        const sent = pages.flatMap((p) => p.tasks);
        expect(sent).toEqual([...sent].sort((x, y) => (x < y ? -1 : 1)));
        expect(new Set(sent).size).toBe(sent.length);
        expect(sent.at(-1)).toBe(max);
        expect(sent.length).toBeGreaterThanOrEqual(301);
        pages.slice(1).forEach((p, i) => expect(p.tasks[0]!).toBeGreaterThan(pages[i]!.last));
      } finally {
        stop.abort();
      }
    });
    test("StartsEachBacklogSmall: a stream that grew its pages and caught up starts the next backlog of the shard at 64 tasks again", async () => {
      const wf = a.client(WorkflowService);
      const { runId } = await start(a, "rebacklog");
      const shardId = shardFor(nsId, "rebacklog", SHARDS);
      const signal = async (n: number) => {
        for (let i = 0; i < n; i++) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "rebacklog", runId }, signalName: `s${i}` });
        return BigInt((await lastTaskIds(a)).get(shardId)!);
      };
      const from = await lastTaskIds(a);
      const max = await signal(300);
      // A sender of its own, read by hand: a backlog builds while its stream waits to be read, as
      // when the peer's apply stalls (a server's stream would send each commit as it came).
      const sender = createReplicationSender({ db: a.server.database.db, cluster: a.server.cluster, notifier: createEventNotifier() });
      const after = shardIds.map((id) => BigInt(from.get(id) ?? 0));
      const req = create(StreamReplicationTasksRequestSchema, {
        clusterName: "clusterB", cursors: { shardIds, afterTaskIds: after, ackedTaskIds: after, pageSizes: shardIds.map(() => MAX_SHARD_PAGE) }, waitTimeoutMs: 10_000,
      });
      const s = sender.streamReplicationTasks(req, new AbortController().signal);
      /** The shard's page sizes until its page ends at `to`. */
      const pagesUntil = async (to: bigint) => {
        const sizes: number[] = [];
        for (let last = -1n; last !== to; ) {
          const { value } = await s.next();
          const page = (value as StreamReplicationTasksResponse).shards.find((p) => p.shardId === shardId);
          if (page) (sizes.push(page.tasks.length), (last = page.lastTaskId));
        }
        return sizes;
      };
      try {
        const grown = await pagesUntil(max);
        // 64, 128, then the 108 left in a page of 256: the pages grew.
        expect(grown).toEqual([FIRST_STREAM_PAGE, 2 * FIRST_STREAM_PAGE, 300 - 3 * FIRST_STREAM_PAGE]);
        // Caught up; the next backlog comes 64 tasks first again, not a page of the size it had grown to.
        const again = await pagesUntil(await signal(300));
        expect(again.slice(0, 2)).toEqual([FIRST_STREAM_PAGE, 2 * FIRST_STREAM_PAGE]);
        expect(again.reduce((x, y) => x + y, 0)).toBe(300);
      } finally {
        await s.return(undefined);
        await sender.stop();
      }
    });
  });

  describe(`a stream of many shards on ${store}: each answer looks at the shards that moved and those not finished`, () => {
    const MANY = 40;
    let a: TestCluster, b: TestCluster;
    let nsId: string;

    beforeAll(async () => {
      // No full read during the test (one a minute): what each answer looks at comes from the marks alone.
      [a, b] = await startClusters(store, [{ shards: MANY, serverOptions: { replication: { senderRecheckMs: 60_000 } } }, { shards: MANY }]);
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("GoesOnWithAShardItDidNotFinish, a page at a time, without a commit to wake it, then each new commit's shard", async () => {
      const wf = a.client(WorkflowService);
      const { runId } = await start(a, "busy");
      for (let i = 0; i < 4; i++) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "busy", runId }, signalName: `s${i}` });
      const busyShard = shardFor(nsId, "busy", MANY);
      const ids = Array.from({ length: MANY }, (_, i) => i + 1);
      const stop = new AbortController();
      const it = a.client(AdminService)
        .streamReplicationTasks(
          { clusterName: "clusterB", cursors: { shardIds: ids, afterTaskIds: ids.map(() => 0n), ackedTaskIds: ids.map(() => 0n), pageSizes: ids.map(() => 1) }, waitTimeoutMs: 30_000 },
          { signal: stop.signal },
        )[Symbol.asyncIterator]();
      try {
        // Five tasks in one shard, one a page: five answers in a row, no commit between them.
        const sent: string[] = [];
        for (let n = 0; n < 5; n++) {
          const { value } = await it.next();
          const pages = (value as StreamReplicationTasksResponse).shards.filter((p) => p.tasks.length);
          expect(pages.map((p) => p.shardId)).toEqual([busyShard]);
          sent.push(...pages[0]!.tasks.map((t) => `${t.firstEventId}`));
        }
        expect(sent).toHaveLength(5);
        // Caught up: a commit in another shard is the next answer, that shard alone.
        let other = 0;
        while (shardFor(nsId, `other-${other}`, MANY) === busyShard) other++;
        await start(a, `other-${other}`);
        const { value } = await it.next();
        const pages = (value as StreamReplicationTasksResponse).shards;
        expect(pages.map((p) => [p.shardId, p.tasks.map((t) => t.workflowId)])).toEqual([[shardFor(nsId, `other-${other}`, MANY), [`other-${other}`]]]);
      } finally {
        stop.abort();
      }
    });
  });

  describe(`a receiver on ${store}: A's tasks on one stream, acked apart`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;

    beforeAll(async () => {
      ({ a, b, nsId } = await replicatingPair(store, [{}, {}]));
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("ReplicatesOnOneStream, never pulling, and A hears every shard acked to its end", async () => {
      const wf = a.client(WorkflowService);
      await Promise.all(Array.from({ length: 40 }, (_, i) => start(a, `s-${i}`)));
      await Promise.all(
        Array.from({ length: 120 }, (_, i) => wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: `s-${i % 40}` }, signalName: `n${i}` })),
      );
      await caughtUp(a, b, nsId);
      expect(counted(a, "service_requests", "StreamReplicationTasks")).toBe(1);
      expect(counted(a, "service_requests", "PullReplicationTasks")).toBe(0);
      expect(counted(a, "service_requests", "GetReplicationTasks")).toBe(0);
      // What B applied reaches A by AckReplicationTasks: each shard acked up to its last task.
      const maxOf = await lastTaskIds(a);
      expect([...maxOf.values()].every((m) => m > 0)).toBe(true);
      await eventually(async () => {
        const acks = await outboundAcks(a.server.database.db, "clusterB");
        expect(shardIds.map((id) => acks.get(id))).toEqual(shardIds.map((id) => maxOf.get(id)));
      });
      const ackCalls = counted(a, "service_requests", "AckReplicationTasks");
      expect(ackCalls).toBeGreaterThan(0);
      expect(counted(a, "service_errors", "AckReplicationTasks")).toBe(0);
    });
  });

  describe(`a receiver of a source without StreamReplicationTasks on ${store}: pulls, until the source serves it`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    // Whether A serves the stream: off, as a tern from before it, until A is "upgraded".
    let serving = false;
    const bLog: { level: string; msg: string }[] = [];

    beforeAll(async () => {
      const log = createLogger({ level: "info", write: (line) => bLog.push(JSON.parse(line)) });
      ({ a, b, nsId } = await replicatingPair(store, [
        { serverOptions: { replication: { serveStream: () => serving } } },
        { serverOptions: { log, replication: { reprobeMs: 300 } } },
      ]));
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("PullsAnOldSource, and takes the stream once it is served", async () => {
      for (let i = 0; i < 8; i++) await start(a, `old-${i}`);
      await caughtUp(a, b, nsId);
      expect(counted(a, "service_requests", "PullReplicationTasks")).toBeGreaterThan(0);
      expect(a.server.metrics.render()).toMatch(/service_errors\{operation="StreamReplicationTasks"[^}]*code="Unimplemented"\} [1-9]/);
      expect(bLog.filter((l) => l.msg.includes("does not serve StreamReplicationTasks")).length).toBe(1);

      serving = true;
      // B's first round of pulls past the reprobe interval (300 ms) tries the stream again;
      // a commit ends the long poll it may be waiting in.
      let nudges = 0;
      await eventually(
        async () => {
          await start(a, `nudge-${nudges++}`);
          expect(bLog.some((l) => l.msg.includes("serves StreamReplicationTasks now"))).toBe(true);
        },
        { timeout: 15_000 },
      );
      await caughtUp(a, b, nsId);
      // And keeps to it: no pull for what follows.
      const pulls = counted(a, "service_requests", "PullReplicationTasks");
      for (let i = 0; i < 8; i++) await start(a, `new-${i}`);
      await caughtUp(a, b, nsId);
      expect((await historiesOf(b, nsId)).filter((e) => e.eventId === 1).length).toBe(16 + nudges);
      expect(counted(a, "service_requests", "PullReplicationTasks")).toBe(pulls);
    });
  });

  for (const protocol of ["stream", "pull"] as const) {
    describe(`a receiver on ${store} (${protocol}): the source hears of applies only once they are durable`, () => {
      let a: TestCluster, b: TestCluster;
      let nsId: string;
      // While the gate is closed, B's `durable` (on PostgreSQL, the WAL flush past its asynchronous applies) waits.
      const gate = createGate();
      let durableCalls = 0;

      beforeAll(async () => {
        const durable = () => (durableCalls++, gate.held ?? Promise.resolve());
        ({ a, b, nsId } = await replicatingPair(store, [
          { serverOptions: { replication: { serveStream: () => protocol === "stream" } } },
          { serverOptions: { replication: { durable } } },
        ]));
      });
      afterAll(async () => {
        gate.open();
        await Promise.all([a.destroy(), b.destroy()]);
      });

      /** Each shard's ack of clusterB on A, and each shard's last task. */
      const acksOnA = async () => {
        const acks = await outboundAcks(a.server.database.db, "clusterB");
        return shardIds.map((id) => acks.get(id) ?? 0);
      };
      const maxesOnA = async () => {
        const last = await lastTaskIds(a);
        return shardIds.map((id) => last.get(id)!);
      };

      test("AcksOnlyOnceDurableResolves, and applies meanwhile on a stream", async () => {
        for (let i = 0; i < 8; i++) await start(a, `d-${i}`);
        await caughtUp(a, b, nsId);
        await eventually(async () => expect(await acksOnA()).toEqual(await maxesOnA()), { timeout: 15_000 });

        gate.close();
        const calls = durableCalls;
        const before = await acksOnA();
        for (let i = 0; i < 8; i++) await start(a, `h-${i}`);
        if (protocol === "stream") {
          // B applies as before (its acks go apart from the stream)...
          await caughtUp(a, b, nsId);
        } else {
          // ...where a pull carries its acks: the pull after an apply waits for them to be durable
          // (as it waited for the apply's own flush before applies were asynchronous).
          await eventually(async () => expect((await historiesOf(b, nsId)).some((e) => e.workflowId === "h-0")).toBe(true), { timeout: 15_000 });
        }
        // ...and would have told A by now (acks go at most 50 ms apart, and with each pull).
        await eventually(() => expect(durableCalls).toBeGreaterThan(calls), { timeout: 15_000 });
        await Bun.sleep(300);
        expect(await acksOnA()).toEqual(before);

        gate.open();
        await caughtUp(a, b, nsId);
        await eventually(async () => expect(await acksOnA()).toEqual(await maxesOnA()), { timeout: 15_000 });
        expect(await acksOnA()).not.toEqual(before);
      });
    });
  }

  describe(`a stream's reader on ${store}: stops reading while a shard page's worth waits for the apply`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    // While the gate is closed, B's applies wait before their commit.
    const gate = createGate();

    beforeAll(async () => {
      const beforeCommit = (operation: string) => (operation === "ReplicateHistory" ? gate.held : undefined);
      ({ a, b, nsId } = await replicatingPair(store, [{}, { serverOptions: { beforeCommit } }]));
    });
    afterAll(async () => {
      gate.open();
      await Promise.all([a.destroy(), b.destroy()]);
    });

    test("HoldsItsReadingAtAShardPagesWorth while the apply waits, and applies everything once it goes on", async () => {
      const runs = Array.from({ length: 10 }, (_, i) => `r-${i}`);
      for (const id of runs) await start(a, id);
      await caughtUp(a, b, nsId);

      gate.close();
      // 1,400 tasks, ten writers at a time: the first apply waits, the reader reads on to a page's worth.
      const wf = a.client(WorkflowService);
      const perRun = 140;
      await Promise.all(runs.map(async (workflowId) => {
        for (let i = 0; i < perRun; i++) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId }, signalName: `n${i}` });
      }));
      await eventually(() => expect(receivedOf(b, "clusterA")).toBeGreaterThanOrEqual(MAX_SHARD_PAGE), { timeout: 15_000 });
      // Every task is on its way; a reader that did not hold would have the rest within moments.
      await Bun.sleep(500);
      const received = receivedOf(b, "clusterA");
      expect(received).toBeGreaterThanOrEqual(MAX_SHARD_PAGE);
      expect(received).toBeLessThan(MAX_SHARD_PAGE + 100);

      gate.open();
      await caughtUp(a, b, nsId, 30_000);
      expect(receivedOf(b, "clusterA")).toBe(0);
    });
  });

  describe(`a stream gone silent on ${store}: given up after the wait and its grace, and opened again`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    // While the gate is closed, A's stream messages wait (as from a source whose connection went dead without a word).
    const gate = createGate();
    const aLog: { level: string; msg: string; code?: string; error?: string }[] = [];
    const bLog: { level: string; msg: string; error?: string }[] = [];

    beforeAll(async () => {
      const beforeStreamMessage = (signal: AbortSignal) =>
        gate.held ? Promise.race([gate.held, new Promise<void>((r) => signal.addEventListener("abort", () => r(), { once: true }))]) : Promise.resolve();
      const log = createLogger({ level: "info", write: (line) => bLog.push(JSON.parse(line)) });
      const aLogger = createLogger({ level: "info", write: (line) => aLog.push(JSON.parse(line)) });
      ({ a, b, nsId } = await replicatingPair(store, [
        { serverOptions: { log: aLogger, replication: { beforeStreamMessage } } },
        // Given up after 2.2 s of silence: a grace of 300 ms was less than a loaded host's event loop
        // can stall (both servers run in this process), and a stall gave the stream up while A answered.
        { serverOptions: { log, replication: { waitMs: 200, silenceGraceMs: 2_000 } } },
      ]));
    });
    afterAll(async () => {
      gate.open();
      await Promise.all([a.destroy(), b.destroy()]);
    });

    test("GivesUpAStreamSilentPastTheWait, and replicates on the next once the source answers", async () => {
      await start(a, "before");
      await caughtUp(a, b, nsId);
      // Not given up while the source answers (a message without news every 200 ms), for longer than the silence it gives up after.
      await Bun.sleep(3_000);
      expect(counted(a, "service_requests", "StreamReplicationTasks")).toBe(1);

      gate.close();
      await start(a, "held");
      // Nothing for 2.2 s: B gives the call up and opens another, which is held too.
      await eventually(() => expect(counted(a, "service_requests", "StreamReplicationTasks")).toBeGreaterThanOrEqual(3), { timeout: 15_000 });
      expect(bLog.some((l) => l.msg === "replication stream failed" && String(l.error).includes("sent nothing on its replication stream for 2200 ms"))).toBe(true);
      expect((await historiesOf(b, nsId)).some((e) => e.workflowId === "held")).toBe(false);
      // A hears the call closed by its caller: CANCELED, not an INTERNAL error that names nothing.
      expect(aLog.filter((l) => l.msg === "internal error")).toEqual([]);
      expect(aLog.some((l) => l.msg === "rpc failed" && l.code === "canceled" && String(l.error).startsWith("the caller closed the call"))).toBe(true);

      gate.open();
      await caughtUp(a, b, nsId);
    });
  });
}
