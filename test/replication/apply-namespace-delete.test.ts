import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { eq } from "drizzle-orm";
import { inboundAckRows } from "../../replication/ack-levels";
import type { HistoryApplier } from "../../replication/applier";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { runStatement } from "../../src/persistence/raw-statements";
import { backfillJobs, executions, historyEvents, replicationDlq } from "../../src/persistence/schema";
import { parseHistogram } from "../../bench/lib/prom-histogram";
import { connectAll, describeOn, eventuallyOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { awaitedLater } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { holdingOpen, mergeGate, type MergeGate } from "./dlq-faults";
import { checkedApplier, globalNamespace, lastTaskIds } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** What B logs of a task that failed past its retries while its namespace was deleted. */
const DROPPED = "replication task failed past its retries, its namespace deleted here meanwhile: acked, not moved to the DLQ";

/** Where an apply of a workflow waits: before its transaction, or inside it after its reads (pipelined path) or before its apply (full path). */
type GateAt = "before" | "reads" | "apply";

/** A gate of a workflow's apply: taken once, at its skip + 1st reach of `at`. */
interface Gated {
  at: GateAt;
  gate: MergeGate;
  skip?: number;
}

/** The applier with gates per workflow id; a workflow in `full` takes the full path (its plan refused). */
function gatedApplier(gates: Map<string, Gated>, full: Set<string>) {
  const pass = async (workflowIds: string[], at: GateAt) => {
    const id = workflowIds.find((w) => gates.get(w)?.at === at);
    const g = id === undefined ? undefined : gates.get(id);
    if (!g) return;
    if (g.skip) return void g.skip--;
    gates.delete(id!);
    await g.gate.reached();
  };
  return (inner: HistoryApplier): HistoryApplier => ({
    ...inner,
    async namespacesOf(tasks) {
      await pass(tasks.map((t) => ("workflowId" in t ? String(t.workflowId) : "")), "before");
      return inner.namespacesOf(tasks);
    },
    async readForApply(tx, tasks) {
      const found = await inner.readForApply(tx, tasks);
      await pass(tasks.map((t) => t.task.workflowId), "reads");
      return found;
    },
    planApply: (ns, task, reads) => (full.has(task.workflowId) ? undefined : inner.planApply(ns, task, reads)),
    async applyTask(tx, ns, task, fetchRaw) {
      await pass([task.workflowId], "apply");
      return inner.applyTask(tx, ns, task, fetchRaw);
    },
  });
}

// PGlite runs one transaction at a time: the delete cannot start while the apply's is open.
for (const store of (await testStores()).filter((s) => s === "postgres")) {
  describe(`A namespace deleted on a cluster while it applies its replicated history, on ${store} (clusterA -> clusterB, one shard)`, () => {
    let a: TestCluster, b: TestCluster;
    const gates = new Map<string, Gated>();
    const full = new Set<string>();
    const poisoned = new Set<string>();
    const bLog: { msg: string; namespaceId?: string }[] = [];

    beforeAll(async () => {
      const faulty = checkedApplier((t) => {
        if (poisoned.has(t.workflowId)) throw new Error(`injected fault for ${t.workflowId}`);
      });
      const replication = { retry: { attempts: 2, backoffMs: 5 }, wrapApplier: (inner: HistoryApplier) => gatedApplier(gates, full)(faulty(inner)) };
      [a, b] = await startClusters(store, [{ shards: 1 }, { shards: 1, serverOptions: { replication, log: createLogger({ write: (l) => bLog.push(JSON.parse(l)) }) } }]);
      await connectAll([a, b]);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    const lockWaits = async () =>
      (await runStatement(b.server.database.db, "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'", []))[0]!.n as number;

    /**
     * Starts workflowId on A in namespace name (of A and B), holds its apply on B before its
     * transaction while A takes B out of the namespace and B hears it, then lets it on to `inside`
     * (whose gate it holds when this returns). The namespace's id and the task's.
     */
    async function heldAfterLeaving(name: string, workflowId: string, inside: Gated) {
      const nsId = await globalNamespace(a, b, name);
      const before = mergeGate();
      gates.set(workflowId, { at: "before", gate: before });
      await a.client(WorkflowService).startWorkflowExecution({ namespace: name, workflowId, workflowType: "Pay", taskQueue: "q" });
      const taskId = (await lastTaskIds(a)).get(1)!;
      await before.held;
      await a.client(WorkflowService).updateNamespace({ namespace: name, clusters: ["clusterA"] });
      await eventuallyOn(b, name, (ns) => expect(ns.replicationConfig?.clusters).toEqual(["clusterA"]));
      gates.set(workflowId, inside);
      before.release();
      await inside.gate.held;
      return { nsId, taskId };
    }

    /**
     * Waits for held, a backfill page's gate, or fails naming B's backfill jobs: the wait hung the
     * test to its 120 s once on a loaded host, saying nothing of where the backfill stood. Two of
     * the backfill's idle waits (30 s, cut short by a job's start) is as long as it may take.
     */
    async function backfillReached(held: Promise<void>) {
      let reached = false;
      void held.then(() => (reached = true));
      await eventually(async () => {
        if (!reached) throw new Error(`B's backfill did not reach its page; B's backfill jobs: ${JSON.stringify(await b.server.database.db.select().from(backfillJobs))}`);
      }, { timeout: 60_000, interval: 100 });
    }

    /** Passes once B's ack of A's shard is past taskId: the apply (or the move to the DLQ) committed. */
    const ackedPast = (taskId: number) =>
      eventually(async () => expect((await inboundAckRows(b.server.database.db)).find((r) => r.remoteCluster === "clusterA" && r.queue === "history")?.ackLevel).toBeGreaterThanOrEqual(taskId));

    /**
     * As heldAfterLeaving, at `at` inside the apply's transaction, and deletes the namespace on B
     * meanwhile. What B holds of it after both.
     */
    async function deleteWhileApplying(name: string, workflowId: string, at: GateAt) {
      const inside = mergeGate();
      const { nsId, taskId } = await heldAfterLeaving(name, workflowId, { at, gate: inside });
      let settled = false;
      const deleting = awaitedLater(b.client(OperatorService).deleteNamespace({ namespace: name }).finally(() => (settled = true)));
      // Before: the delete did not wait for the apply (it had nothing of the run to take yet).
      await eventually(async () => expect(settled || (await lockWaits()) === 1).toBe(true));
      inside.release();
      await deleting;
      // What it wrote is here or not for good.
      await ackedPast(taskId);
      const db = b.server.database.db;
      return [await db.select().from(executions).where(eq(executions.namespaceId, nsId)), await db.select().from(historyEvents).where(eq(historyEvents.namespaceId, nsId))];
    }

    // First: the shard's first page takes the pipelined path (one trip only after one applied).
    test("TestDeleteNamespaceWhileAPipelinedApplyCreatesARun: the delete waits for the apply and takes the run it created", async () => {
      // Before: the run, created after the delete went past, was committed after it, of no namespace.
      expect(await deleteWhileApplying("piped", "w1", "reads")).toEqual([[], []]);
    });

    test("TestDeleteNamespaceWhileAFullApplyCreatesARun: the delete waits for the apply and takes the run it created", async () => {
      full.add("w2");
      expect(await deleteWhileApplying("fully", "w2", "apply")).toEqual([[], []]);
    });

    test("TestDeleteNamespaceWhileATaskGoesToTheDlq: the task's move to the DLQ waits for the delete, then acks it with no entry of the namespace gone", async () => {
      const [name, workflowId] = ["dropped", "w4"];
      poisoned.add(workflowId);
      const last = mergeGate();
      // The page's apply and the task's first attempt fail; its last (retry.attempts: 2) is held after its reads.
      const { nsId, taskId } = await heldAfterLeaving(name, workflowId, { at: "reads", gate: last, skip: 2 });
      // The shard's ack, held once the last attempt rolls back: the move to the DLQ after it waits there,
      // its entry written (before: no barrier) or its barrier waiting for the delete.
      const ack = holdingOpen(b.server.database.db, "select 1 from replication_ack_levels where remote_cluster = 'clusterA' and direction = 'inbound' and queue = 'history' for update", []);
      try {
        await eventually(async () => expect(await lockWaits()).toBe(1));
        const deleting = b.client(OperatorService).deleteNamespace({ namespace: name });
        await eventually(async () => expect(await lockWaits()).toBe(2));
        last.release();
        await ack.taken;
        await deleting;
      } finally {
        last.release();
        ack.release();
        await ack.done;
      }
      await ackedPast(taskId);
      // Before: the entry, written while the delete ran, committed after it, of no namespace (a merge: "deleted here ...; purge it").
      expect(await b.server.database.db.select().from(replicationDlq).where(eq(replicationDlq.namespaceId, nsId))).toEqual([]);
      expect(bLog.filter((l) => l.namespaceId === nsId).map((l) => l.msg)).toEqual([DROPPED]);
    });

    test("TestDeleteNamespaceWhileABackfillBringsARun: the delete waits for the backfill's page and takes the run it brought", async () => {
      const name = "joined";
      const wf = a.client(WorkflowService);
      await wf.registerNamespace({ namespace: name, isGlobalNamespace: true, clusters: ["clusterA"] });
      await wf.startWorkflowExecution({ namespace: name, workflowId: "w3", workflowType: "Pay", taskQueue: "q" });
      // B's pull passes w3's task over (not B's yet) before B joins. A pull that read it after the
      // join was sent it (the page's read takes the namespace's clusters as they are then), and B's
      // stream, once it had the namespace, could apply w3 before the backfill: the page then found
      // w3 here and applied nothing, and the wait below never ended.
      await ackedPast((await lastTaskIds(a)).get(1)!);
      const inside = mergeGate();
      gates.set("w3", { at: "apply", gate: inside });
      // B joins: its backfill from A brings w3, and its page's transaction waits at the gate.
      await wf.updateNamespace({ namespace: name, clusters: ["clusterA", "clusterB"] });
      await backfillReached(inside.held);
      const nsId = (await describeOn(b, name)).namespaceInfo!.id;
      await wf.updateNamespace({ namespace: name, clusters: ["clusterA"] });
      await eventuallyOn(b, name, (ns) => expect(ns.replicationConfig?.clusters).toEqual(["clusterA"]));
      let settled = false;
      const deleting = awaitedLater(b.client(OperatorService).deleteNamespace({ namespace: name }).finally(() => (settled = true)));
      await eventually(async () => expect(settled || (await lockWaits()) === 1).toBe(true));
      const pages = () => parseHistogram(b.server.metrics.render(), "persistence_latency", { operation: "BackfillHistory" })?.count ?? 0;
      const before = pages();
      inside.release();
      await deleting;
      // The page's transaction ended: what it wrote is here or not for good.
      await eventually(() => expect(pages()).toBeGreaterThan(before));
      const db = b.server.database.db;
      // Before: the run, brought after the delete went past, was committed after it, of no namespace.
      expect([await db.select().from(executions).where(eq(executions.namespaceId, nsId)), await db.select().from(historyEvents).where(eq(historyEvents.namespaceId, nsId))]).toEqual([[], []]);
    });
  });
}
