import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { fileURLToPath } from "node:url";
import { and, eq, sql } from "drizzle-orm";
import type { DlqRow } from "../../replication/dlq";
import { createLogger } from "../../src/observability/log";
import { AdminService, type MergeReplicationDlqResponse } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { runStatement } from "../../src/persistence/raw-statements";
import { parseHistogram } from "../../bench/lib/prom-histogram";
import { replicationAckLevels, replicationDlq } from "../../src/persistence/schema";
import { connectAll, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { awaitedLater } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { faultyApplier, mergeGate, type MergeGate } from "./dlq-faults";
import { addr, expectSameHistories, globalNamespace, historiesOf, lastTaskIds } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const root = fileURLToPath(new URL("../..", import.meta.url));
const NS = "payments";

/** Runs bin/tern against x as a subprocess (not a TTY). */
async function tern(x: TestCluster, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const child = Bun.spawn(["node", "bin/tern", "--address", addr(x), ...args], { cwd: root, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { code, out, err };
}

for (const store of await testStores()) {
  describe(`replication DLQ on ${store} (clusterA -> clusterB, one shard)`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    const poisoned = new Set<string>();
    const outage = new Map<string, number>();
    const busy = new Map<string, number>();
    /** Workflow id -> the gate its applies wait at (set just before a merge). */
    const gates = new Map<string, MergeGate>();
    const bLog: { msg: string; error?: string; stream?: string }[] = [];
    const run = (workflowId: string) => ({ workflowId, runId: "" });
    const dlqRows = () => b.server.database.db.select().from(replicationDlq).orderBy(replicationDlq.taskId);
    const inboundAck = async () => {
      const [row] = await b.server.database.db
        .select()
        .from(replicationAckLevels)
        .where(and(eq(replicationAckLevels.remoteCluster, "clusterA"), eq(replicationAckLevels.direction, "inbound"), eq(replicationAckLevels.queue, "history")));
      return row?.ackLevel ?? 0;
    };
    const sourceMaxTask = async () => Number((await a.client(AdminService).getReplicationTasks({ shardId: 1 })).maxTaskId);

    beforeAll(async () => {
      [a, b] = await startClusters(store, [
        { shards: 1 },
        {
          shards: 1,
          serverOptions: {
            replication: { retry: { attempts: 3, backoffMs: 5 }, wrapApplier: faultyApplier(poisoned, outage, busy, gates) },
            log: createLogger({ write: (l) => bLog.push(JSON.parse(l)) }),
          },
        },
      ]);
      await connectAll([a, b]);
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("PoisonedExecutionGoesToDlq: the others in its shard replicate and the ack moves past it", async () => {
      poisoned.add("bad");
      const wf = a.client(WorkflowService);
      await wf.startWorkflowExecution({ namespace: NS, workflowId: "bad", workflowType: "Pay", taskQueue: "q" });
      for (const i of [1, 2, 3]) await wf.startWorkflowExecution({ namespace: NS, workflowId: `good-${i}`, workflowType: "Pay", taskQueue: "q" });
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: run("bad"), signalName: "s1" });
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: run("good-1"), signalName: "s1" });
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: run("bad"), signalName: "s2" });

      const max = await sourceMaxTask();
      await eventually(async () => expect(await inboundAck()).toBe(max), { timeout: 20_000 });
      const onB = (await historiesOf(b, nsId)).map((e) => `${e.workflowId}:${e.eventId}`);
      expect(onB).toEqual(["good-1:1", "good-1:2", "good-2:1", "good-3:1"]);
      // The first task failed its budget; the later tasks of the run are held behind it, never applied out of order.
      expect((await dlqRows()).map((r) => [r.workflowId, r.firstEventId, r.nextEventId, r.attempts])).toEqual([
        ["bad", 1, 2, 3], ["bad", 2, 3, 0], ["bad", 3, 4, 0],
      ]);
      expect((await dlqRows())[0]!.lastError).toContain("injected fault for bad");
      // Set after the apply's commit: the ack can show first.
      await eventually(() => expect(b.server.metrics.render()).toContain('replication_dlq_size{source_cluster="clusterA"} 3'));
      const status = (await b.client(AdminService).getReplicationStatus({})).remotes.find((r) => r.clusterName === "clusterA")!;
      expect(status.dlqSize).toBe(3n);
      expect((await tern(b, "replication", "status")).out).toContain("DLQ (tasks per source): clusterA 3");

      const listed = await tern(b, "replication", "dlq", "list", "--source-cluster", "clusterA", "--shard", "1", "-o", "json");
      expect(listed.code).toBe(0);
      expect(JSON.parse(listed.out).entries.map((e: { workflowId: string; taskId: string }) => e.workflowId)).toEqual(["bad", "bad", "bad"]);
      expect((await tern(b, "replication", "dlq", "list")).out).toMatch(/^clusterA +1 +\d+ +bad +\S+ +\[1, 2\) +3 /m);
      // Of the 7 tasks, the 4 applied: before, the lag histogram counted the 3 in the DLQ as applied too.
      await eventually(() => {
        const text = b.server.metrics.render();
        const applied = Number(/^replication_tasks_applied\{remote_cluster="clusterA"\} (\d+)$/m.exec(text)?.[1]);
        expect([parseHistogram(text, "replication_latency", { remote_cluster: "clusterA" })?.count, applied]).toEqual([4, 4]);
      });
    });

    test("MergeBringsItLevel: after the fault is gone, merge applies the held run in order and verify finds no difference", async () => {
      poisoned.delete("bad");
      // Still held while its earlier tasks sit in the DLQ, although the fault is gone.
      await a.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: run("bad"), signalName: "s3" });
      await eventually(async () => expect(await dlqRows()).toHaveLength(4));

      const merged = await tern(b, "replication", "dlq", "merge", "-o", "json");
      expect(merged.code).toBe(0);
      expect(JSON.parse(merged.out).merged).toBe("4");
      expect(await dlqRows()).toEqual([]);
      expect(b.server.metrics.render()).toContain('replication_dlq_size{source_cluster="clusterA"} 0');
      await expectSameHistories(a, b, nsId);
      const verified = await tern(b, "replication", "verify", "--namespace", NS, "--cluster", "clusterA");
      expect(verified.code).toBe(0);
      expect(verified.out).toContain("histories are identical");

      // Once merged, new tasks of the run replicate normally again.
      await a.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: run("bad"), signalName: "s4" });
      await eventually(() => expectSameHistories(a, b, nsId));
      expect(await dlqRows()).toEqual([]);
    });

    test("MergeKeepsWhatStillFails and PurgeEmptiesIt: purge asks for --yes when not a TTY", async () => {
      poisoned.add("worse");
      await a.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId: "worse", workflowType: "Pay", taskQueue: "q" });
      await a.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: run("worse"), signalName: "s1" });
      await eventually(async () => expect(await dlqRows()).toHaveLength(2), { timeout: 20_000 });
      const reason = "23514: injected fault for worse: new row violates check constraint";
      // The receiver stores PostgreSQL's code and reason, not the failed statement (its values can be payloads).
      expect((await dlqRows())[0]!.lastError).toBe(reason);

      const stillFails = await b.client(AdminService).mergeReplicationDlq({});
      expect(stillFails.merged).toBe(0n);
      expect(stillFails.failed.map((e) => [e.workflowId, e.lastError.includes("injected fault")])).toEqual([["worse", true], ["worse", false]]);
      expect((await dlqRows())[0]!.attempts).toBe(4);
      // A merge that fails again stores the same text as the receiver did: no statement (before: the reason, then "Failed query: insert into ...").
      expect([(await dlqRows())[0]!.lastError, stillFails.failed[0]!.lastError]).toEqual([reason, reason]);
      expect(JSON.stringify((await dlqRows()).map((r) => r.lastError))).not.toContain("insert into");
      // The README's list: LAST ERROR is that reason, and so is -o json's.
      const listed = await tern(b, "replication", "dlq", "list", "--source-cluster", "clusterA");
      expect(listed.out.split("\n")[1]).toMatch(/^clusterA +1 +\d+ +worse +\S+ +\[1, 2\) +4 +\S+ +23514: injected fault for worse: new row violates check constraint$/);
      expect(JSON.parse((await tern(b, "replication", "dlq", "list", "-o", "json")).out).entries[0].lastError).toBe(reason);
      // A shard the source has not (clusterA has one) is refused, not "empty", by every DLQ call, with or without the source.
      const none = await tern(b, "replication", "dlq", "list", "--source-cluster", "clusterA", "--shard", "2");
      const outOfRange = "error: invalid_argument: shard 2 is out of range: cluster clusterA has shards 1-1; a DLQ entry carries its source cluster's shard";
      expect([none.code, none.out, none.err.trim()]).toEqual([1, "", outOfRange]);
      for (const verb of [["merge"], ["purge", "--yes"]]) {
        expect((await tern(b, "replication", "dlq", ...verb, "--source-cluster", "clusterA", "--shard", "2")).err.trim()).toBe(outOfRange);
      }
      expect((await tern(b, "replication", "dlq", "list", "--shard", "99")).err.trim()).toBe(
        "error: invalid_argument: shard 99 is out of range: no remote cluster of this one has it (cluster clusterA has shards 1-1); a DLQ entry carries its source cluster's shard",
      );
      expect(await dlqRows()).toHaveLength(2);
      expect(JSON.stringify([(await dlqRows()).map((r) => r.lastError), stillFails.failed.map((e) => e.lastError), bLog])).not.toContain("secret-card");

      const refused = await tern(b, "replication", "dlq", "purge");
      expect(refused.code).toBe(2);
      expect(refused.err).toContain("--yes");
      expect(await dlqRows()).toHaveLength(2);
      // A typo in the cluster's name is not an empty DLQ.
      const typo = await tern(b, "replication", "dlq", "purge", "--source-cluster", "clusterAA", "--yes");
      expect([typo.code, typo.err.trim()]).toEqual([1, "error: not_found: cluster clusterAA is not known here: it has no DLQ entries and is no remote cluster of this one"]);
      expect((await tern(b, "replication", "dlq", "list", "--source-cluster", "clusterAA")).code).toBe(1);
      expect((await tern(b, "replication", "dlq", "merge", "--source-cluster", "clusterAA")).err.trim()).toStartWith("error: not_found: cluster clusterAA is not known here");
      // Nor is this cluster's own name (asked on the source, as the README's example once was): it answered "Purged 0".
      const own = await tern(b, "replication", "dlq", "purge", "--source-cluster", "clusterB", "--yes");
      expect([own.code, own.err.trim()]).toEqual([1, "error: invalid_argument: cluster clusterB is this cluster: its DLQ holds tasks from its remote clusters; name one of them, or ask the cluster that received clusterB's tasks"]);
      expect((await tern(b, "replication", "dlq", "list", "--source-cluster", "clusterB")).code).toBe(1);
      const purged = await tern(b, "replication", "dlq", "purge", "--source-cluster", "clusterA", "--yes");
      expect(purged.code).toBe(0);
      expect(purged.out).toBe("Purged 2 DLQ entries\n");
      expect(await dlqRows()).toEqual([]);
      expect(b.server.metrics.render()).toContain('replication_dlq_size{source_cluster="clusterA"} 0');
    });

    test("ARealRefusalIsStoredAsItsReason: a check constraint on B's executions; the receiver and a merge that fails again store PostgreSQL's code and message, no statement", async () => {
      const onB = b.server.database.db;
      await onB.execute(sql`alter table executions add constraint refuse_checked check (workflow_id <> 'checked')`);
      try {
        await a.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId: "checked", workflowType: "Pay", taskQueue: "q" });
        await eventually(async () => expect(await dlqRows()).toHaveLength(1), { timeout: 20_000 });
        const reason = '23514: new row for relation "executions" violates check constraint "refuse_checked"';
        expect((await dlqRows())[0]!.lastError).toBe(reason);
        const stillFails = await b.client(AdminService).mergeReplicationDlq({});
        // Before: the merge stored the reason, then "Failed query: insert into executions ..." with the row's values.
        expect([stillFails.failed.map((e) => e.lastError), (await dlqRows()).map((r) => [r.attempts, r.lastError])]).toEqual([[reason], [[4, reason]]]);
      } finally {
        await onB.execute(sql`alter table executions drop constraint refuse_checked`);
        await b.client(AdminService).purgeReplicationDlq({});
      }
    });

    /** Starts and signals workflowId on A after faults.set(workflowId, n): B applies both events, its faults used up, and the DLQ stays empty. */
    async function appliedDespite(faults: Map<string, number>, workflowId: string, n: number): Promise<void> {
      faults.set(workflowId, n);
      const wf = a.client(WorkflowService);
      await wf.startWorkflowExecution({ namespace: NS, workflowId, workflowType: "Pay", taskQueue: "q" });
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: run(workflowId), signalName: "s1" });
      const runOn = async (x: TestCluster) => (await historiesOf(x, nsId)).filter((e) => e.workflowId === workflowId);
      await eventually(async () => expect(await runOn(b)).toEqual(await runOn(a)), { timeout: 20_000 });
      expect((await runOn(b)).map((e) => e.eventId)).toEqual([1, 2]);
      expect(faults.get(workflowId)).toBe(0);
      expect(await dlqRows()).toEqual([]);
      expect(await inboundAck()).toBe(await sourceMaxTask());
    }

    test("DatabaseOutageIsNotTheTasksFault: applies failing on a lost connection past the retry budget are retried, never DLQ'd", async () => {
      bLog.length = 0;
      await appliedDespite(outage, "outage", 6);
      // Six failed applies, each restarting the stream: one warning, then one line once it applies again.
      const said = bLog.filter((l) => l.msg.startsWith("replication")).map(({ msg, stream, error }) => ({ msg, stream, error }));
      expect(said).toEqual([
        { msg: "replication stream failed", stream: "history", error: "read ECONNRESET" },
        { msg: "replication stream recovered", stream: "history", error: undefined },
      ]);
    });

    test("BusyDatabaseIsNotTheTasksFault: applies that time out past the retry budget are retried task by task, never DLQ'd", async () => {
      bLog.length = 0;
      await appliedDespite(busy, "busy", 8);
      // Each attempt within the budget is logged; past it the stream is failing (said once, with PostgreSQL's reason) until the task applies.
      const said = bLog.filter((l) => l.msg.startsWith("replication"));
      expect(said.filter((l) => l.msg === "replication task failed; retrying").length).toBeLessThanOrEqual(4);
      expect(said.filter((l) => l.msg !== "replication task failed; retrying").map(({ msg, error }) => ({ msg, error }))).toEqual([
        { msg: "replication stream failed", error: "57014: canceling statement due to statement timeout" },
        { msg: "replication stream recovered", error: undefined },
      ]);
    });

    /** Starts and signals workflowId on A while B's applies of it fail: B's DLQ holds its two tasks, then the fault is gone. */
    async function twoEntriesOf(workflowId: string): Promise<void> {
      poisoned.add(workflowId);
      await a.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId, workflowType: "Pay", taskQueue: "q" });
      await a.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: run(workflowId), signalName: "s1" });
      await eventually(async () => expect(await dlqRows()).toHaveLength(2), { timeout: 20_000 });
      poisoned.delete(workflowId);
    }

    test("PurgeWhileMergeWins: entries purged after a merge listed them are not applied by it", async () => {
      await twoEntriesOf("purged");

      // The merge listed both entries and fetched the first; the operator purges them meanwhile.
      const gate = mergeGate();
      gates.set("purged", gate);
      const merging = b.client(AdminService).mergeReplicationDlq({});
      await gate.held;
      expect((await b.client(AdminService).purgeReplicationDlq({ sourceCluster: "clusterA" })).purged).toBe(2n);
      gate.release();
      const merged = await merging;
      // Before: both applied (merged 2), the purge's "without applying" undone.
      expect([merged.merged, merged.failed]).toEqual([0n, []]);
      expect((await historiesOf(b, nsId)).filter((e) => e.workflowId === "purged")).toEqual([]);
      expect(await dlqRows()).toEqual([]);
    });

    test("MergeTakesWhatArrivesMeanwhile: a held run's task that reaches the DLQ during the merge is merged too, and the run replicates again", async () => {
      const wf = a.client(WorkflowService);
      await twoEntriesOf("meanwhile");

      // The merge listed both entries; a signal's task arrives and is held behind them.
      const gate = mergeGate();
      gates.set("meanwhile", gate);
      const merging = b.client(AdminService).mergeReplicationDlq({});
      await gate.held;
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: run("meanwhile"), signalName: "s2" });
      await eventually(async () => expect(await dlqRows()).toHaveLength(3), { timeout: 20_000 });
      gate.release();
      const merged = await merging;
      // Before: 2 merged, the third left in the DLQ and the run held behind it until another merge.
      expect([merged.merged, merged.failed]).toEqual([3n, []]);
      expect(await dlqRows()).toEqual([]);
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: run("meanwhile"), signalName: "s3" });
      const eventsOf = async (x: TestCluster) => (await historiesOf(x, nsId)).filter((e) => e.workflowId === "meanwhile");
      await eventually(async () => expect(await eventsOf(b)).toEqual(await eventsOf(a)));
      expect((await eventsOf(b)).map((e) => e.eventId)).toEqual([1, 2, 3, 4]);
      expect(await dlqRows()).toEqual([]);
    });

    const entriesOf = async (workflowId: string) => (await dlqRows()).filter((r) => r.workflowId === workflowId);

    /** A run with one DLQ entry, its start's, the fault gone: the entry. */
    async function oneEntryOf(workflowId: string): Promise<DlqRow> {
      poisoned.add(workflowId);
      await a.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId, workflowType: "Pay", taskQueue: "q" });
      await eventually(async () => expect(await entriesOf(workflowId)).toHaveLength(1), { timeout: 20_000 });
      poisoned.delete(workflowId);
      return (await entriesOf(workflowId))[0]!;
    }

    const lockWaits = async () =>
      (await runStatement(b.server.database.db, "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'", []))[0]!.n;

    /**
     * Signals entry's run on A while a transaction of the test holds an entry of the signal's task
     * id (A's next in its one shard) on B, uncommitted: a receiver that holds the task waits for it
     * to insert its own. The answer rolls that transaction back.
     */
    async function signalBehindAnEntryInTheWay(entry: DlqRow): Promise<() => Promise<void>> {
      const taskId = (await lastTaskIds(a)).get(1)! + 1;
      let end!: () => void;
      const ends = new Promise<void>((r) => (end = r));
      let placed!: () => void;
      const inTheWay = new Promise<void>((r) => (placed = r));
      const blocking = b.server.database.db
        .transaction(async (tx) => {
          await tx.insert(replicationDlq).values({ ...entry, taskId });
          placed();
          await ends;
          tx.rollback();
        })
        .catch(() => {});
      await inTheWay;
      await a.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: run(entry.workflowId), signalName: "s1" });
      expect((await lastTaskIds(a)).get(1)).toBe(taskId);
      return () => (end(), blocking);
    }

    /** Once merged: no entry is left, the ack is at A's last task, and B holds the run's two events as A does. */
    async function leftNoneBehind(workflowId: string, merged: MergeReplicationDlqResponse, n: bigint): Promise<void> {
      await eventually(async () => expect(await inboundAck()).toBe(await sourceMaxTask()), { timeout: 20_000 });
      expect(await entriesOf(workflowId)).toEqual([]);
      expect([merged.merged, merged.failed]).toEqual([n, []]);
      const eventsOf = async (x: TestCluster) => (await historiesOf(x, nsId)).filter((e) => e.workflowId === workflowId);
      expect((await eventsOf(b)).map((e) => e.eventId)).toEqual([1, 2]);
      expect(await eventsOf(b)).toEqual(await eventsOf(a));
    }

    // PGlite runs one transaction at a time: the receiver cannot read the DLQ while a merge's transaction is open.
    test.skipIf(store !== "postgres")("MergeOfARunsLastEntryLeavesNoneBehind: a task of the run read while the merge's delete is open is applied after it, not held", async () => {
      const entry = await oneEntryOf("last");
      // The merge deleted the run's one entry; its transaction stays open, its apply to come.
      const gate = mergeGate(true);
      gates.set("last", gate);
      const merging = b.client(AdminService).mergeReplicationDlq({});
      await gate.held;
      const rollBack = await signalBehindAnEntryInTheWay(entry);
      // The receiver waits: on the merge's delete (it locks the entries it reads) or, before, on the test's entry.
      await eventually(async () => expect(await lockWaits()).toBe(1));
      gate.release();
      const merged = await merging;
      await rollBack();
      // Before: the signal's task held behind the entry the merge was deleting, left in the DLQ and the run held.
      await leftNoneBehind("last", merged, 1n);
    });

    test.skipIf(store !== "postgres")("MergeOfAnEntryReadAsHeldWaitsForTheReceiver: it lists the task held behind it, committed after the merge's delete was due", async () => {
      const entry = await oneEntryOf("read-first");
      // The receiver read the run's entry and holds the signal's task behind it, not committed yet.
      const rollBack = await signalBehindAnEntryInTheWay(entry);
      await eventually(async () => expect(await lockWaits()).toBe(1));
      const gate = mergeGate();
      gates.set("read-first", gate);
      let done = false;
      const merging = awaitedLater(b.client(AdminService).mergeReplicationDlq({}).finally(() => (done = true)));
      await gate.held;
      gate.release();
      // The merge's delete waits for the receiver (which locked the entry it read) or, before, merged the entry and ended.
      await eventually(async () => expect(done || (await lockWaits()) === 2).toBe(true));
      await rollBack();
      // Before: merged 1, the held task committed after the merge's last listing and left in the DLQ.
      await leftNoneBehind("read-first", await merging, 2n);
    });
  });
}
