import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { and, eq } from "drizzle-orm";
import { anyShardKey, outboundAcks } from "../../replication/ack-levels";
import { FIRST_STREAM_PAGE } from "../../replication/pull-budget";
import { createReplicationSender } from "../../replication/sender";
import type { HistoryApplier } from "../../replication/applier";
import { AdminService, PullReplicationTasksRequestSchema, type PullReplicationTasksRequest } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createEventNotifier } from "../../src/history/notifier";
import { shardFor } from "../../src/history/shard";
import { createLogger } from "../../src/observability/log";
import { replicationAckLevels, replicationDlq } from "../../src/persistence/schema";
import { parseCounter } from "../../bench/lib/prom-histogram";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr, globalNamespace, historiesOf, lastTaskIds } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const SHARDS = 4;
const NS = "orders";

/** A workflow id of the namespace in each shard 1..SHARDS, named prefix-N. */
function idsByShard(nsId: string, prefix: string): Map<number, string> {
  const ids = new Map<number, string>();
  for (let i = 0; ids.size < SHARDS; i++) {
    const s = shardFor(nsId, `${prefix}-${i}`, SHARDS);
    if (!ids.has(s)) ids.set(s, `${prefix}-${i}`);
  }
  return ids;
}

const start = (x: TestCluster, workflowId: string) =>
  x.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId, workflowType: "T", taskQueue: "q" });

for (const store of await testStores()) {
  describe(`PullReplicationTasks on ${store}: a page of every shard asked for in one call`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    const pull = (req: MessageInitShape<typeof PullReplicationTasksRequestSchema>) => a.client(AdminService).pullReplicationTasks({ clusterName: "clusterB", pageSize: 100, ...req });
    const perShard = (shardId: number, after = 0n) =>
      a.client(AdminService).getReplicationTasks({ shardId, afterTaskId: after, pageSize: 100, includeEvents: true, clusterName: "clusterB" });
    const cursor = (shardId: number, after: bigint, acked = 0n) => ({ shardId, afterTaskId: after, ackedTaskId: acked });

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{ shards: SHARDS }, { shards: SHARDS }]);
      // One way only: clusterB does not pull, the test pulls in its name.
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      nsId = await globalNamespace(a, b, NS);
      for (const id of idsByShard(nsId, "w").values()) await start(a, id);
      for (const id of idsByShard(nsId, "v").values()) await start(a, id);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("AnswersEveryShardAskedFor, in the order asked, as GetReplicationTasks would shard by shard", async () => {
      const order = [3, 1, 4, 2];
      const res = await pull({ shards: order.map((s) => cursor(s, 0n)) });
      expect(res.shards.map((p) => p.shardId)).toEqual(order);
      for (const page of res.shards) {
        const alone = await perShard(page.shardId);
        expect(page.tasks.length).toBe(2);
        expect(page.tasks.map((t) => [t.shardId, t.taskId, t.workflowId, t.events.length])).toEqual(alone.tasks.map((t) => [t.shardId, t.taskId, t.workflowId, t.events.length]));
        expect([page.maxTaskId, page.lastTaskId]).toEqual([alone.maxTaskId, alone.lastTaskId]);
      }
    });

    test("AShardsOwnPageSizeBoundsItsPage; a shard that names none takes the request's", async () => {
      const res = await pull({ pageSize: 100, shards: [{ ...cursor(3, 0n), pageSize: 1 }, cursor(1, 0n)] });
      const [three, one] = res.shards;
      expect(three!.tasks.length).toBe(1);
      // The next page starts after the one task sent.
      expect(three!.lastTaskId).toBe(three!.tasks[0]!.taskId);
      expect(one!.tasks.length).toBe(2);
    });

    test("ALongPollWakesOnACommitInAnyShard; the other shards answer empty at their cursors", async () => {
      const lasts = new Map<number, bigint>();
      for (let s = 1; s <= SHARDS; s++) lasts.set(s, (await perShard(s)).lastTaskId);
      const polling = pull({ shards: [...lasts].map(([s, last]) => cursor(s, last)), waitTimeoutMs: 20_000 });
      const id = idsByShard(nsId, "late").get(3)!;
      const started = performance.now();
      await start(a, id);
      const res = await polling;
      // Woken by the commit, not by the end of the 20 s wait.
      expect(performance.now() - started).toBeLessThan(10_000);
      for (const page of res.shards) {
        expect(page.tasks.map((t) => t.workflowId)).toEqual(page.shardId === 3 ? [id] : []);
        if (page.shardId !== 3) expect(page.lastTaskId).toBe(lasts.get(page.shardId)!);
      }
    });

    test("AcksEachShardAtItsAckedTaskId, never past what the peer says it applied", async () => {
      const [one, two] = [await perShard(1), await perShard(2)];
      // Shard 1 fetched but not applied (acked 0), shard 2 applied through its last task.
      await pull({ shards: [cursor(1, one.lastTaskId, 0n), cursor(2, two.lastTaskId, two.lastTaskId)] });
      await eventually(async () => expect((await outboundAcks(a.server.database.db, "clusterB")).get(2)).toBe(Number(two.lastTaskId)), { timeout: 5_000 });
      expect((await outboundAcks(a.server.database.db, "clusterB")).get(1) ?? 0).toBe(0);
    });

    test("RefusesBadRequests with InvalidArgument and says why", async () => {
      const refusal = async (req: MessageInitShape<typeof PullReplicationTasksRequestSchema>) => {
        const e = await pull(req).then(() => undefined, (x: unknown) => x);
        expect(e).toBeInstanceOf(ConnectError);
        expect((e as ConnectError).code).toBe(Code.InvalidArgument);
        return (e as ConnectError).rawMessage;
      };
      expect(await refusal({ clusterName: "", shards: [cursor(1, 0n)] })).toContain("cluster_name is required");
      expect(await refusal({ shards: [] })).toContain("at least one shard");
      expect(await refusal({ shards: [cursor(0, 0n)] })).toContain(`shard id must be 1..${SHARDS}`);
      expect(await refusal({ shards: [cursor(SHARDS + 1, 0n)] })).toContain(`shard id must be 1..${SHARDS}`);
      expect(await refusal({ shards: [cursor(2, 0n), cursor(2, 5n)] })).toContain("shard 2 is asked for twice");
      const cols = (n: number) => ({ shardIds: [1, 2].slice(0, n), afterTaskIds: [0n, 0n], ackedTaskIds: [0n, 0n] });
      expect(await refusal({ shards: [cursor(1, 0n)], cursorColumns: cols(1) })).toContain("not both");
      expect(await refusal({ cursorColumns: cols(1) })).toContain("shard_ids has 1, after_task_ids 2");
      expect(await refusal({ cursorColumns: { ...cols(2), pageSizes: [5] } })).toContain("page_sizes 1");
      expect(await refusal({ cursorColumns: { shardIds: [], afterTaskIds: [], ackedTaskIds: [] } })).toContain("at least one shard");
      expect(await refusal({ cursorColumns: { ...cols(2), shardIds: [2, 2] } })).toContain("shard 2 is asked for twice");
    });

    test("CursorColumnsAreAnsweredSparse: only the shards with news, each as its ShardCursor would be", async () => {
      const all = await pull({ shards: [1, 2, 3, 4].map((s) => cursor(s, 0n)) });
      expect(all.readsCursorColumns).toBe(true);
      const at = new Map(all.shards.map((p) => [p.shardId, p]));
      // Shards 1 and 3 at their last task (nothing new), 2 from the start, 4 with its own page size of 1.
      const after = [at.get(1)!.lastTaskId, 0n, at.get(3)!.lastTaskId, 0n];
      const res = await pull({
        cursorColumns: { shardIds: [1, 2, 3, 4], afterTaskIds: after, ackedTaskIds: [0n, 0n, 0n, 0n], pageSizes: [0, 0, 0, 1] },
      });
      expect(res.readsCursorColumns).toBe(true);
      expect(res.shards.map((p) => p.shardId)).toEqual([2, 4]);
      const two = res.shards[0]!, four = res.shards[1]!;
      expect(two.tasks.map((t) => t.taskId)).toEqual(at.get(2)!.tasks.map((t) => t.taskId));
      expect([two.maxTaskId, two.lastTaskId]).toEqual([at.get(2)!.maxTaskId, at.get(2)!.lastTaskId]);
      expect(four.tasks.map((t) => t.taskId)).toEqual([at.get(4)!.tasks[0]!.taskId]);
      expect(four.lastTaskId).toBe(four.tasks[0]!.taskId);
      // Nothing new anywhere: an empty answer once the wait ends.
      const idle = await pull({
        cursorColumns: { shardIds: [1, 2, 3, 4], afterTaskIds: [1, 2, 3, 4].map((s) => at.get(s)!.lastTaskId), ackedTaskIds: [0n, 0n, 0n, 0n] },
        waitTimeoutMs: 50,
      });
      expect(idle.shards).toEqual([]);
    });
  });

  describe(`pulling all shards on ${store}: one transaction for the pages of a pull, a bad task holds up no other shard`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    const poisoned = new Set<string>();
    const pagesApplied = () =>
      [...b.server.metrics.render().matchAll(/replication_pages_applied\{[^}]*\} (\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
    const inboundAcks = async () => {
      const rows = await b.server.database.db
        .select()
        .from(replicationAckLevels)
        .where(and(eq(replicationAckLevels.remoteCluster, "clusterA"), eq(replicationAckLevels.direction, "inbound"), eq(replicationAckLevels.queue, "history")));
      return new Map(rows.map((r) => [r.shardId, r.ackLevel]));
    };
    const sourceMax = async () => {
      const max = new Map<number, number>();
      for (let s = 1; s <= SHARDS; s++) max.set(s, Number((await a.client(AdminService).getReplicationTasks({ shardId: s })).maxTaskId));
      return max;
    };
    const connectB = (enabled: boolean) => b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: enabled });

    beforeAll(async () => {
      // Every failure of the poisoned workflow is a task failure: 3 attempts, then the DLQ.
      const faulty = (inner: HistoryApplier): HistoryApplier => {
        const check = (workflowId: string) => {
          if (poisoned.has(workflowId)) throw new Error(`injected fault for ${workflowId}`);
        };
        return {
          ...inner,
          applyTask: (tx, ns, task, fetchRaw) => (check(task.workflowId), inner.applyTask(tx, ns, task, fetchRaw)),
          planApply: (ns, task, reads) => (check(task.workflowId), inner.planApply(ns, task, reads)),
        };
      };
      [a, b] = await startClusters(store, [
        { shards: SHARDS },
        { shards: SHARDS, serverOptions: { replication: { retry: { attempts: 3, backoffMs: 5 }, wrapApplier: faulty } } },
      ]);
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      await connectB(false);
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("PagesOfEveryShardApplyInOneTransaction: four shards behind, one page applied", async () => {
      for (const id of idsByShard(nsId, "x").values()) await start(a, id);
      const before = pagesApplied();
      await connectB(true);
      const max = await sourceMax();
      await eventually(async () => expect(await inboundAcks()).toEqual(max), { timeout: 15_000 });
      expect(pagesApplied() - before).toBe(1);
      expect(await historiesOf(b, nsId)).toEqual(await historiesOf(a, nsId));
    });

    test("APoisonedTaskGoesToTheDlq; its shard's other tasks and the other shards apply", async () => {
      await connectB(false);
      const ids = idsByShard(nsId, "y");
      const bad = ids.get(2)!;
      poisoned.add(bad);
      for (const id of ids.values()) await start(a, id);
      await start(a, idsByShard(nsId, "z").get(2)!);
      await connectB(true);
      const max = await sourceMax();
      await eventually(async () => expect(await inboundAcks()).toEqual(max), { timeout: 20_000 });
      const dlq = await b.server.database.db.select().from(replicationDlq);
      expect(dlq.map((r) => [r.shardId, r.workflowId])).toEqual([[2, bad]]);
      const good = (rows: Awaited<ReturnType<typeof historiesOf>>) => rows.filter((r) => r.workflowId !== bad);
      expect(good(await historiesOf(b, nsId))).toEqual(good(await historiesOf(a, nsId)));
      expect((await historiesOf(b, nsId)).some((r) => r.workflowId === bad)).toBe(false);
    });
  });

  describe(`pulling from a source without PullReplicationTasks on ${store}: shard by shard, as before it`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    // Whether A serves PullReplicationTasks: off, as a tern from before it, until A is "upgraded".
    let serving = false;
    /** The sum of A's counter `name` over the series of operation op. */
    const counted = (name: string, op: string) => parseCounter(a.server.metrics.render(), name, { operation: op });

    beforeAll(async () => {
      [a, b] = await startClusters(store, [
        { shards: SHARDS, serverOptions: { replication: { servePull: () => serving } } },
        { shards: SHARDS, serverOptions: { replication: { reprobeMs: 300 } } },
      ]);
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      nsId = await globalNamespace(a, b, NS);
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("EveryShardReplicates, behind and then by long poll", async () => {
      for (const id of idsByShard(nsId, "old").values()) await start(a, id);
      await eventually(async () => expect(await historiesOf(b, nsId)).toEqual(await historiesOf(a, nsId)), { timeout: 15_000 });
      // Caught up: B's calls wait at A, and a commit in any shard answers them.
      for (const id of idsByShard(nsId, "later").values()) await start(a, id);
      await eventually(async () => expect(await historiesOf(b, nsId)).toEqual(await historiesOf(a, nsId)), { timeout: 15_000 });
      expect((await historiesOf(b, nsId)).length).toBe(2 * SHARDS);
      // B asked for the new call first and was refused, as a tern before it refuses: not_found "no route for ...".
      expect(a.server.metrics.render()).toMatch(/service_errors\{operation="PullReplicationTasks"[^}]*code="NotFound"\} [1-9]/);
    });

    test("PullsInOneCallAgainOnceTheSourceServesIt", async () => {
      const refused = counted("service_errors", "PullReplicationTasks");
      serving = true;
      // A commit answers B's per-shard long polls; its first pull past the reprobe interval
      // (300 ms here) tries the one call again.
      let nudges = 0;
      await eventually(
        async () => {
          await start(a, `nudge-${nudges++}`);
          expect(counted("service_requests", "PullReplicationTasks")).toBeGreaterThan(refused);
        },
        { timeout: 15_000 },
      );
      // And keeps to it: no per-shard call for what follows.
      const perShardCalls = counted("service_requests", "GetReplicationTasks");
      for (const id of idsByShard(nsId, "after").values()) await start(a, id);
      await eventually(async () => expect(await historiesOf(b, nsId)).toEqual(await historiesOf(a, nsId)), { timeout: 15_000 });
      expect((await historiesOf(b, nsId)).length).toBe(3 * SHARDS + nudges);
      expect(counted("service_requests", "GetReplicationTasks")).toBe(perShardCalls);
      expect(counted("service_errors", "PullReplicationTasks")).toBe(refused);
    });
  });

  describe(`pulling from a source before cursor columns on ${store}: ShardCursors, as before them`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    // Whether A reads cursor columns (off: as a tern before them), and what each of B's pulls gave.
    let reads = false;
    const gave: boolean[] = [];
    // B's log lines of info and above: its stream must not fail over the switch.
    const bLog: { level: string; msg: string }[] = [];

    beforeAll(async () => {
      const serveCursorColumns = (asked: boolean) => (gave.push(asked), reads);
      const log = createLogger({ level: "info", write: (line) => bLog.push(JSON.parse(line)) });
      [a, b] = await startClusters(store, [
        { shards: SHARDS, serverOptions: { replication: { serveCursorColumns } } },
        { shards: SHARDS, serverOptions: { log } },
      ]);
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      nsId = await globalNamespace(a, b, NS);
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    const replicates = async (prefix: string) => {
      for (const id of idsByShard(nsId, prefix).values()) await start(a, id);
      await eventually(async () => expect(await historiesOf(b, nsId)).toEqual(await historiesOf(a, nsId)), { timeout: 15_000 });
    };

    test("AnOldSourceGetsShardCursorsOnly, and every shard replicates", async () => {
      await replicates("old");
      expect(gave.length).toBeGreaterThan(0);
      expect(gave.some(Boolean)).toBe(false);
    });

    test("OnceTheSourceSaysItReadsThem, the cursors go as columns", async () => {
      reads = true;
      // The next answer says so (a caught-up long poll ends within the commit below).
      await replicates("new");
      const from = gave.length;
      await replicates("newer");
      expect(gave.slice(from).length).toBeGreaterThan(0);
      expect(gave.slice(from).every(Boolean)).toBe(true);
    });

    test("ASourceReplacedByAnOlderOne: the columns it cannot read are sent again as ShardCursors", async () => {
      expect(gave.at(-1)).toBe(true);
      reads = false;
      const from = gave.length;
      await replicates("downgraded");
      // The columns were asked, refused (no cursors in them, for such a source), and asked again without.
      expect(gave.slice(from)).toContain(true);
      expect(gave.at(-1)).toBe(false);
      expect(await historiesOf(b, nsId)).toHaveLength(4 * SHARDS);
      // Without the stream failing and restarting.
      expect(bLog.filter((l) => l.msg.includes("cursor columns")).length).toBe(1);
      expect(bLog.filter((l) => l.msg === "replication stream failed")).toEqual([]);
    });
  });

  // 520 shards: a uniform catch-up page each would ask for 520,000 tasks in one pull; each
  // shard now asks its share of 8,192 (replication/pull-budget.ts, whose sizes the unit tests
  // check): 7 tasks while caught up as far as B knows, a page or more once known behind.
  describe(`pulling ${store} clusters of 520 shards: each shard's page within the pull's budget`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    beforeAll(async () => {
      // A's sender re-reads a minute apart: a long poll here ends on a wake, or on its wait.
      [a, b] = await startClusters(store, [{ shards: 520, serverOptions: { replication: { senderRecheckMs: 60_000 } } }, { shards: 520 }]);
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));
    /**
     * A's backlog, written once by whichever test needs it first (so a test run alone, or after
     * a slow one timed out, finds it): 61 tasks of the hot workflow's shard, one each of 20 runs.
     */
    let backlog: Promise<void> | undefined;
    const writeBacklog = () =>
      (backlog ??= (async () => {
        const wf = a.client(WorkflowService);
        await start(a, "hot");
        for (let i = 0; i < 60; i++) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "hot" }, signalName: "s" });
        for (let i = 0; i < 20; i++) await start(a, `cold-${i}`);
      })());

    test("ABacklogInOneShardAndSingleTasksInOthersReplicate, through pages of 7 and then the rest", async () => {
      await writeBacklog();
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
      await eventually(async () => expect(await historiesOf(b, nsId)).toEqual(await historiesOf(a, nsId)), { timeout: 30_000 });
      expect((await historiesOf(b, nsId)).filter((e) => e.workflowId === "hot")).toHaveLength(61);
    });

    // A poll of more than 16 shards waits on any shard's commit (one notifier key, not 520).
    test("ALongPollOfEveryShardWakesOnACommitInAnyOfThem, and its sparse answer lists that shard alone", async () => {
      const admin = a.client(AdminService);
      const ids = Array.from({ length: 520 }, (_, i) => i + 1);
      const now = await admin.pullReplicationTasks({ clusterName: "clusterB", pageSize: 1, shards: ids.map((shardId) => ({ shardId, afterTaskId: 0n, ackedTaskId: 0n })) });
      const max = new Map(now.shards.map((p) => [p.shardId, p.maxTaskId]));
      const polling = admin.pullReplicationTasks({
        clusterName: "clusterB",
        cursorColumns: { shardIds: ids, afterTaskIds: ids.map((s) => max.get(s)!), ackedTaskIds: ids.map(() => 0n) },
        waitTimeoutMs: 20_000,
      });
      const started = performance.now();
      await start(a, "woken");
      const res = await polling;
      expect(performance.now() - started).toBeLessThan(10_000);
      expect(res.shards.map((p) => p.tasks.map((t) => t.workflowId))).toEqual([["woken"]]);
      expect(res.shards[0]!.shardId).toBe(shardFor(nsId, "woken", 520));
    });

    test("APollOfManyShardsWaitsOnOneKey, which any shard's commit wakes", async () => {
      // A sender of its own on A's database, whose notifier the test holds: the commit below is
      // announced to it by hand, and nothing else (its re-read is a minute away) wakes it.
      const notifier = createEventNotifier();
      const sender = createReplicationSender({ db: a.server.database.db, cluster: a.server.cluster, notifier, recheckMs: 60_000 });
      try {
        const ids = Array.from({ length: 520 }, (_, i) => i + 1);
        const cols = (after: (s: number) => bigint) => ({ shardIds: ids, afterTaskIds: ids.map(after), ackedTaskIds: ids.map(() => 0n) });
        const now = await sender.pullReplicationTasks(create(PullReplicationTasksRequestSchema, { clusterName: "clusterB", pageSize: 1, cursorColumns: cols(() => 0n) }));
        const max = new Map(now.shards.map((p) => [p.shardId, p.maxTaskId]));
        const polling = sender.pullReplicationTasks(create(PullReplicationTasksRequestSchema, { clusterName: "clusterB", cursorColumns: cols((s) => max.get(s) ?? 0n), waitTimeoutMs: 30_000 }));
        // Two keys: the poll's (520 with a key a shard) and the peer's ack demands.
        await eventually(() => expect(notifier.keysWaited()).toBe(2));
        await start(a, "announced");
        notifier.notify(anyShardKey);
        const res = await polling;
        expect(res.shards.map((p) => p.tasks.map((t) => t.workflowId))).toEqual([["announced"]]);
      } finally {
        await sender.stop();
      }
    });

    // A round of more than 16 shards reads their counters in one statement, then pages only
    // for the shards whose counter moved past their cursor (sender.ts, readPages).
    test("APullOfEveryShardAnswersAsTheShardsOneByOne, and a disabled connection is refused", async () => {
      const admin = a.client(AdminService);
      await writeBacklog();
      const all = Array.from({ length: 520 }, (_, i) => ({ shardId: i + 1, afterTaskId: 0n, ackedTaskId: 0n }));
      // 15 tasks a shard: 520 of them fit the 8,192-task budget, so the source scales nothing down.
      const res = await admin.pullReplicationTasks({ clusterName: "clusterB", pageSize: 15, shards: all });
      expect(res.shards).toHaveLength(520);
      const busy = res.shards.filter((p) => p.tasks.length);
      expect(busy.length).toBeGreaterThan(1);
      // The hot workflow's shard has more tasks than a page: its page is full, as alone.
      expect(Math.max(...busy.map((p) => p.tasks.length))).toBe(15);
      for (const page of [...busy, res.shards.find((p) => !p.tasks.length)!]) {
        const alone = await admin.getReplicationTasks({ shardId: page.shardId, afterTaskId: 0n, pageSize: 15, includeEvents: true, clusterName: "clusterB" });
        expect(page.tasks.map((t) => [t.taskId, t.workflowId, t.events.length])).toEqual(alone.tasks.map((t) => [t.taskId, t.workflowId, t.events.length]));
        expect([page.maxTaskId, page.lastTaskId]).toEqual([alone.maxTaskId, alone.lastTaskId]);
      }
      const op = a.client(OperatorService);
      await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: false });
      try {
        const behind = all.map((c) => ({ ...c, afterTaskId: 1_000_000n }));
        await rejects(admin.pullReplicationTasks({ clusterName: "clusterB", shards: behind }), Code.FailedPrecondition, "replication with cluster clusterB is disabled on clusterA");
      } finally {
        await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: true });
      }
    });
  });

  describe(`pulling shard by shard on ${store}: a shard dropped from a round`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    // Shards x and y of the namespace; y gets three tasks, B pulls a task a page.
    let x: number, y: number;
    const calls = new Map<number, number>();
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    /**
     * A's GetReplicationTasks hook. x's first call waits until B drops it, so y alone answers
     * B's first round (B learns y's max task id). Every later call for y waits until released:
     * B's second round is answered by x, with y dropped while it is behind.
     */
    const gate = async (shardId: number, signal: AbortSignal) => {
      const n = (calls.get(shardId) ?? 0) + 1;
      calls.set(shardId, n);
      if ((shardId === x && n === 1) || (shardId === y && n >= 2)) {
        await Promise.race([released, new Promise((r) => signal.addEventListener("abort", r, { once: true }))]);
      }
    };
    const lagOf = (shardId: number) =>
      parseCounter(b.server.metrics.render(), "replication_tasks_lag", { remote_cluster: "clusterA", shard: String(shardId) });

    beforeAll(async () => {
      [a, b] = await startClusters(store, [
        { shards: SHARDS, serverOptions: { replication: { servePull: () => false, beforeShardPage: (s, signal) => gate(s, signal) } } },
        { shards: SHARDS, serverOptions: { replication: { pageSize: 1 } } },
      ]);
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      // B knows A, its connection off, before it holds the namespace: connecting a remote it did
      // not know would backfill the namespaces listing both, around the pulls this test holds.
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: false });
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(async () => {
      release();
      await Promise.all([a.destroy(), b.destroy()]);
    });

    test("KeepsTheMaxTaskIdLastHeardOf, so its lag still shows", async () => {
      const ids = [...idsByShard(nsId, "p").entries()];
      [x, y] = [ids[0]![0], ids[1]![0]];
      const ys = [...Array(3).keys()].map((i) => idsByShard(nsId, `y${i}`).get(y)!);
      for (const id of ys) await start(a, id);
      const xs = idsByShard(nsId, "x").get(x)!;
      await start(a, xs);
      // B's connection on after the writes: its first round answers at once.
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
      // x's task arrives in the second round, while y's second call is held and dropped.
      await eventually(async () => expect((await historiesOf(b, nsId)).some((r) => r.workflowId === xs)).toBe(true), { timeout: 15_000 });
      expect(calls.get(y)).toBeGreaterThanOrEqual(2);
      const applied = new Set((await historiesOf(b, nsId)).map((r) => r.workflowId));
      expect(ys.filter((id) => applied.has(id))).toEqual([ys[0]!]);
      // y is two tasks behind and was not heard from in that round: its lag still shows.
      expect(lagOf(y)).toBeGreaterThan(0);
      release();
      await eventually(async () => expect(await historiesOf(b, nsId)).toEqual(await historiesOf(a, nsId)), { timeout: 15_000 });
      await eventually(() => expect(lagOf(y)).toBe(0), { timeout: 15_000 });
    });
  });

  describe(`pulling a backlog from a source without the stream on ${store}: small pulls first, as a stream's pages`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    /** Each of B's pulls of A: where it asked the hot shard's page to start, and how many tasks. */
    const pulls: { after: bigint; size: number }[] = [];
    let hot = 0;
    const recordPull = async (req: PullReplicationTasksRequest) => {
      const cols = req.cursorColumns;
      const i = cols ? cols.shardIds.indexOf(hot) : req.shards.findIndex((c) => c.shardId === hot);
      if (i >= 0) pulls.push(cols ? { after: cols.afterTaskIds[i]!, size: cols.pageSizes[i]! } : { after: req.shards[i]!.afterTaskId, size: req.shards[i]!.pageSize });
    };

    beforeAll(async () => {
      [a, b] = await startClusters(store, [
        { shards: SHARDS, serverOptions: { replication: { serveStream: () => false, beforePull: recordPull } } },
        { shards: SHARDS },
      ]);
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("StartsABacklogSmallAndGrowsIt: a shard 300 tasks behind is asked 64 tasks first, then 128, and 64 again once caught up", async () => {
      const wf = a.client(WorkflowService);
      const { runId } = await start(a, "hot");
      for (let i = 0; i < 300; i++) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "hot", runId }, signalName: `s${i}` });
      hot = shardFor(nsId, "hot", SHARDS);
      const max = BigInt((await lastTaskIds(a)).get(hot)!);
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
      await eventually(async () => expect(await historiesOf(b, nsId)).toEqual(await historiesOf(a, nsId)), { timeout: 20_000 });
      // The pull after the last page (its prefetch, or the long poll after it) asks from the shard's end.
      await eventually(() => expect(pulls.some((p) => p.after === max)).toBe(true), { timeout: 15_000 });
      // The first pull a small one, to come and apply at once (200 before, the receiver's page size);
      // the next twice that, then the 109 left in one page.
      expect(pulls.slice(0, 2).map((p) => p.size)).toEqual([FIRST_STREAM_PAGE, 2 * FIRST_STREAM_PAGE]);
      expect(pulls.slice(0, 3).map((p) => p.after)).toEqual([0n, BigInt(FIRST_STREAM_PAGE), BigInt(3 * FIRST_STREAM_PAGE)]);
      expect(pulls[2]!.size).toBeGreaterThan(2 * FIRST_STREAM_PAGE);
      // Caught up: the next backlog starts small again.
      expect(pulls.find((p) => p.after === max)!.size).toBe(FIRST_STREAM_PAGE);
    });
  });
}
