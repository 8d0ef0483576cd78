import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { eq, inArray } from "drizzle-orm";
import { createReplicationCleanup } from "../../replication/cleanup";
import { advanceAckLevel } from "../../replication/namespace-queue";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { clusterMetadata, namespaceReplicationTasks, replicationAckLevels, replicationTasks, shards } from "../../src/persistence/schema";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { runCli } from "../cli/harness";
import { startTestCluster, type TestCluster } from "../support/server";
import { serverStartTimeout } from "../support/timeouts";
import { notedStatements } from "./support";
import { parseCounter } from "../../bench/lib/prom-histogram";
import { createMetrics } from "../../src/observability/metrics";

setDefaultTimeout(serverStartTimeout);

describe("replication task cleanup without a peer pulling", () => {
  let c: TestCluster;
  beforeAll(async () => {
    // The tests run the passes and count what each deleted: the server's own pass (every 10 s)
    // could take the acked tasks between a test's ack and its pass (forced by hand: 0 deleted, not 3).
    c = await startTestCluster({ store: "pglite", name: "clusterC", initialFailoverVersion: 3, serverOptions: { replication: { cleanupIntervalMs: 3_600_000 } } });
  });
  afterAll(() => c.destroy());

  /** A global namespace `namespace` with a run, clusterY known here (its connection disabled), and a cleanup showing its backlog in metrics. */
  async function runWithRemoteY(namespace: string, db = c.server.database.db) {
    await c.client(WorkflowService).registerNamespace({ namespace, isGlobalNamespace: true });
    await c.client(WorkflowService).startWorkflowExecution({ namespace, workflowId: `${namespace}-0`, workflowType: "T", taskQueue: "q" });
    const [self] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, true));
    await db.insert(clusterMetadata).values({ ...self!, clusterName: "clusterY", clusterId: "y", isCurrent: false, initialFailoverVersion: 8, enableConnection: false });
    const metrics = createMetrics();
    return { db, metrics, cleanup: createReplicationCleanup({ db, log: c.server.log, graceMs: 0, metrics }) };
  }

  test("RemoteWithoutAckHoldsTasks, NoRemoteDeletesAfterGrace", async () => {
    const db = c.server.database.db;
    await c.client(WorkflowService).registerNamespace({ namespace: "g", isGlobalNamespace: true });
    for (const workflowId of ["w-0", "w-1", "w-2"]) {
      await c.client(WorkflowService).startWorkflowExecution({ namespace: "g", workflowId, workflowType: "T", taskQueue: "q" });
    }
    const [self] = await db.select().from(clusterMetadata);
    // A known remote that never pulled (e.g. disabled) has acked nothing: every task stays.
    await db.insert(clusterMetadata).values({ ...self!, clusterName: "clusterZ", clusterId: "z", isCurrent: false, initialFailoverVersion: 9, enableConnection: false });
    expect(await createReplicationCleanup({ db, log: c.server.log, graceMs: 0 }).runOnce()).toBe(0);
    await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, "clusterZ"));
    expect(await createReplicationCleanup({ db, log: c.server.log, graceMs: 3_600_000 }).runOnce()).toBe(0);
    expect(await createReplicationCleanup({ db, log: c.server.log, graceMs: 0, now: () => new Date(Date.now() + 1000) }).runOnce()).toBe(3);
    expect(await db.$count(replicationTasks)).toBe(0);
  });

  // A remote that never acked was shown behind by every task a shard ever had, those the cleanup
  // deleted before it was added (never sent to it: it repairs them by raw history) among them.
  test("TestARemoteThatNeverAckedIsBehindByTheTasksTheQueueStillHolds", async () => {
    const db = c.server.database.db;
    const wf = c.client(WorkflowService);
    await wf.registerNamespace({ namespace: "never-acked", isGlobalNamespace: true });
    for (const workflowId of ["n-0", "n-1", "n-2"]) await wf.startWorkflowExecution({ namespace: "never-acked", workflowId, workflowType: "T", taskQueue: "q" });
    // No remote yet: past the grace, the cleanup deletes them.
    await createReplicationCleanup({ db, log: c.server.log, graceMs: 0, now: () => new Date(Date.now() + 1000) }).runOnce();
    expect(await db.$count(replicationTasks)).toBe(0);
    for (const workflowId of ["n-3", "n-4"]) await wf.startWorkflowExecution({ namespace: "never-acked", workflowId, workflowType: "T", taskQueue: "q" });
    const [self] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, true));
    await db.insert(clusterMetadata).values({ ...self!, clusterName: "clusterW", clusterId: "w", isCurrent: false, initialFailoverVersion: 7, enableConnection: false });
    try {
      const { remotes } = await c.client(AdminService).getReplicationStatus({});
      const w = remotes.find((r) => r.clusterName === "clusterW")!;
      expect(w.outbound.every((s) => s.ackedTaskId === 0n)).toBe(true);
      // Before: the shards' last task ids (5 or more: the runs of the tests before too).
      expect(w.outbound.reduce((n, s) => n + s.lagTasks, 0n)).toBe(2n);
      const held = await db.select({ shardId: replicationTasks.shardId }).from(replicationTasks);
      for (const s of w.outbound) expect(s.lagTasks).toBe(BigInt(held.filter((t) => t.shardId === s.shardId).length));
    } finally {
      await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, "clusterW"));
    }
  });

  test("DisabledRemoteHoldsTasksWithinItsGraceAndIsSkippedPastIt, recording how far it was cleaned", async () => {
    const db = c.server.database.db;
    await c.client(WorkflowService).registerNamespace({ namespace: "d", isGlobalNamespace: true });
    for (const workflowId of ["d-0", "d-1", "d-2"]) await c.client(WorkflowService).startWorkflowExecution({ namespace: "d", workflowId, workflowType: "T", taskQueue: "q" });
    const [self] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, true));
    await db.insert(clusterMetadata).values({ ...self!, clusterName: "clusterZ", clusterId: "z", isCurrent: false, initialFailoverVersion: 9, enableConnection: false });
    try {
      const held = await db.select({ shardId: replicationTasks.shardId, taskId: replicationTasks.taskId }).from(replicationTasks);
      expect(held.length).toBeGreaterThanOrEqual(3);
      const cleanup = (at: number) => createReplicationCleanup({ db, log: c.server.log, graceMs: 0, disabledGraceMs: 60_000, now: () => new Date(at) });
      // Disabled for less than its grace: clusterZ, which acked nothing, holds every task.
      expect(await cleanup(Date.now() + 30_000).runOnce()).toBe(0);
      expect(await db.$count(replicationTasks)).toBe(held.length);
      // Past it: every task goes, and clusterZ's cleaned_through says how far in each shard.
      expect(await cleanup(Date.now() + 61_000).runOnce()).toBe(held.length);
      const lastOf = new Map<number, number>();
      for (const t of held) lastOf.set(t.shardId, Math.max(lastOf.get(t.shardId) ?? 0, t.taskId));
      const marks = await db.select({ shardId: replicationAckLevels.shardId, through: replicationAckLevels.cleanedThrough }).from(replicationAckLevels)
        .where(eq(replicationAckLevels.remoteCluster, "clusterZ"));
      expect(new Map(marks.filter((m) => lastOf.has(m.shardId)).map((m) => [m.shardId, m.through]))).toEqual(lastOf);
      const status = await c.client(AdminService).getReplicationStatus({});
      const notes = (await runCli(["replication", "status"], { admin: { getReplicationStatus: () => status } })).stdout.split("\n").filter((l) => l.startsWith("NOTE: clusterZ was disabled"));
      // Every shard with a task id clusterZ never acked: those emptied by an earlier pass too.
      expect(notes).toEqual([
        `NOTE: clusterZ was disabled past its grace (replication.disabledRemoteGraceMs): clusterC deleted the tasks it had not acked in ${marks.length} shard(s); ` +
          "once enabled, it is told so and backfills the namespaces both list from clusterC",
      ]);
    } finally {
      await db.delete(replicationAckLevels).where(eq(replicationAckLevels.remoteCluster, "clusterZ"));
      await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, "clusterZ"));
    }
  });

  test("HistoryTasksGoPerShardAtTheLeastAckOfEveryRemote", async () => {
    const db = c.server.database.db;
    await c.client(WorkflowService).registerNamespace({ namespace: "h", isGlobalNamespace: true });
    for (let i = 0; i < 12; i++) await c.client(WorkflowService).startWorkflowExecution({ namespace: "h", workflowId: `h-${i}`, workflowType: "T", taskQueue: "q" });
    const idsOf = async () => {
      const byShard = new Map<number, number[]>();
      for (const t of await db.select().from(replicationTasks)) byShard.set(t.shardId, [...(byShard.get(t.shardId) ?? []), t.taskId].sort((x, y) => x - y));
      return byShard;
    };
    const before = await idsOf();
    const [one, two, three] = [...before.keys()].filter((s) => before.get(s)!.length >= 2);
    expect(three).toBeDefined();
    const [self] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, true));
    for (const [name, v] of [["clusterY", 8], ["clusterZ", 9]] as const) {
      await db.insert(clusterMetadata).values({ ...self!, clusterName: name, clusterId: name, isCurrent: false, initialFailoverVersion: v, enableConnection: false });
    }
    const ack = (remote: string, shardId: number, ackLevel: number) =>
      db.insert(replicationAckLevels).values({ remoteCluster: remote, direction: "outbound", queue: "history", shardId, ackLevel });
    const all = (s: number) => before.get(s)!.at(-1)!;
    // one: Y acked all, Z the first task; two: Y acked all, Z nothing (no row); three: both acked all.
    await ack("clusterY", one!, all(one!));
    await ack("clusterZ", one!, before.get(one!)![0]!);
    await ack("clusterY", two!, all(two!));
    await ack("clusterY", three!, all(three!));
    await ack("clusterZ", three!, all(three!));
    const deleted = await createReplicationCleanup({ db, log: c.server.log, graceMs: 0 }).runOnce();
    const after = await idsOf();
    expect(after.get(one!)).toEqual(before.get(one!)!.slice(1));
    expect(after.get(two!)).toEqual(before.get(two!));
    expect(after.get(three!)).toBeUndefined();
    expect(deleted).toBe(1 + before.get(three!)!.length);
    for (const s of before.keys()) if (s !== one && s !== three) expect(after.get(s)).toEqual(before.get(s));
    await db.delete(replicationAckLevels).where(eq(replicationAckLevels.direction, "outbound"));
    for (const name of ["clusterY", "clusterZ"]) await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, name));
  });

  test("APassAfterAnIdleOneStillDeletesWhatANewAckCovers, and shows a new task's backlog", async () => {
    const { db, metrics, cleanup } = await runWithRemoteY("i");
    const lagOf = (shardId: number) => parseCounter(metrics.render(), "replication_outbound_tasks_lag", { remote_cluster: "clusterY", shard: String(shardId) });
    const [task] = await db.select().from(replicationTasks).where(eq(replicationTasks.workflowId, "i-0"));
    // Passes with nothing changed between them (the later ones end at their first read), then an ack.
    for (let i = 0; i < 3; i++) expect(await cleanup.runOnce()).toBe(0);
    // The tasks the queue holds there (those of the tests before were deleted), as replication status counts.
    expect(lagOf(task!.shardId)).toBe(await db.$count(replicationTasks, eq(replicationTasks.shardId, task!.shardId)));
    await db.insert(replicationAckLevels).values({ remoteCluster: "clusterY", direction: "outbound", queue: "history", shardId: task!.shardId, ackLevel: task!.taskId });
    expect(await cleanup.runOnce()).toBeGreaterThanOrEqual(1);
    expect(await db.$count(replicationTasks, eq(replicationTasks.workflowId, "i-0"))).toBe(0);
    expect(lagOf(task!.shardId)).toBe(0);
    // Idle again, then a task: its backlog shows at the next pass.
    expect(await cleanup.runOnce()).toBe(0);
    await c.client(WorkflowService).startWorkflowExecution({ namespace: "i", workflowId: "i-1", workflowType: "T", taskQueue: "q" });
    const [next] = await db.select().from(replicationTasks).where(eq(replicationTasks.workflowId, "i-1"));
    expect(await cleanup.runOnce()).toBe(0);
    expect(lagOf(next!.shardId)).toBeGreaterThanOrEqual(1);
    await db.delete(replicationAckLevels).where(eq(replicationAckLevels.direction, "outbound"));
    await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, "clusterY"));
  });

  test("TestStatusNamesTheDisabledRemoteTheQueueWaitsFor, and removing it releases the queue", async () => {
    const db = c.server.database.db;
    await c.client(WorkflowService).registerNamespace({ namespace: "s", isGlobalNamespace: true });
    const [self] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, true));
    await db.insert(clusterMetadata).values({ ...self!, clusterName: "clusterZ", clusterId: "z", isCurrent: false, initialFailoverVersion: 9, enableConnection: false });
    // A failure here must not leave clusterZ holding the queue for the next test.
    try {
      // clusterZ acked everything written so far; then two runs start while its connection is disabled.
      const counters = await db.select({ shardId: shards.shardId, next: shards.nextTaskId }).from(shards);
      await db.insert(replicationAckLevels).values(counters.map((s) => ({ remoteCluster: "clusterZ", direction: "outbound", queue: "history", shardId: s.shardId, ackLevel: Number(s.next) - 1 })));
      for (const workflowId of ["s-0", "s-1"]) await c.client(WorkflowService).startWorkflowExecution({ namespace: "s", workflowId, workflowType: "T", taskQueue: "q" });
      const kept = await db.select({ shardId: replicationTasks.shardId }).from(replicationTasks).where(inArray(replicationTasks.workflowId, ["s-0", "s-1"]));
      await createReplicationCleanup({ db, log: c.server.log, graceMs: 0 }).runOnce();
      expect(await db.$count(replicationTasks, inArray(replicationTasks.workflowId, ["s-0", "s-1"]))).toBe(kept.length);
      const status = await c.client(AdminService).getReplicationStatus({});
      const notes = (await runCli(["replication", "status"], { admin: { getReplicationStatus: () => status } })).stdout.split("\n").filter((l) => l.startsWith("NOTE:") && l.includes("behind"));
      // Before: no line; the queue's cleanup waited on clusterZ with nothing saying so but one outbound row per shard.
      expect(notes).toEqual([
        `NOTE: clusterZ is ${kept.length} replication task(s) behind in ${new Set(kept.map((k) => k.shardId)).size} of ${counters.length} of clusterC's shard(s) ` +
          `(its connection is disabled here): clusterC keeps those shards' tasks until it acks them. If clusterZ is retired, take it out of its namespaces' clusters ` +
          `and remove it ('tern operator cluster remove --name clusterZ'): the tasks kept for it alone go at the next cleanup`,
      ]);
      await c.client(OperatorService).removeRemoteCluster({ clusterName: "clusterZ" });
      expect(await db.$count(replicationAckLevels, eq(replicationAckLevels.remoteCluster, "clusterZ"))).toBe(0);
      expect(await createReplicationCleanup({ db, log: c.server.log, graceMs: 0, now: () => new Date(Date.now() + 1000) }).runOnce()).toBeGreaterThanOrEqual(kept.length);
      expect(await db.$count(replicationTasks, inArray(replicationTasks.workflowId, ["s-0", "s-1"]))).toBe(0);
    } finally {
      await db.delete(replicationAckLevels).where(eq(replicationAckLevels.remoteCluster, "clusterZ"));
      await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, "clusterZ"));
    }
  });

  test("APeersNamespacePollBetweenIdlePassesReadsNoShard", async () => {
    const { db, metrics, cleanup } = await runWithRemoteY("p");
    const shown = () => metrics.render().includes('replication_outbound_tasks_lag{remote_cluster="clusterY"');
    const poll = (at: number) => advanceAckLevel(db, { remote: "clusterY", direction: "outbound", queue: "namespace", shardId: 0 }, at, at);
    // Y taken away however the test ends: the next test adds a clusterY of its own.
    try {
      await poll(1);
      await cleanup.runOnce();
      expect(shown()).toBe(true);
      // The gauges taken away by hand: only a pass that reads every shard sets them again.
      metrics.remove("replication_outbound_tasks_lag", { remote_cluster: "clusterY" });
      // Y's next namespace poll, at the same position (the sender writes it at every poll).
      await poll(1);
      await cleanup.runOnce();
      expect(shown()).toBe(false);
      // Its position moved: the pass reads every shard and ack again.
      await poll(2);
      await cleanup.runOnce();
      expect(shown()).toBe(true);
    } finally {
      await db.delete(replicationAckLevels).where(eq(replicationAckLevels.remoteCluster, "clusterY"));
      await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, "clusterY"));
    }
  });

  test("AnIdlePassReadsNoShardUntilSomethingCommits", async () => {
    const noted = notedStatements(c.server.database.db);
    const { db, metrics, cleanup } = await runWithRemoteY("q", noted.db);
    try {
      // PGlite's instance is this cluster's alone, and the server writes nothing while idle: once
      // a pass found nothing to do, the next ones find the snapshot it read at (a pass now and then
      // may see one of the server's own writes).
      const summed: boolean[] = [];
      for (let i = 0; i < 6 && !summed.slice(2).includes(false); i++) {
        const from = noted.ran.length;
        await cleanup.runOnce();
        const [state] = noted.ran.slice(from).filter((r) => r.sql.includes("pg_current_snapshot"));
        summed.push(state?.rows?.[0]?.changed !== false);
      }
      expect(summed.slice(2)).toContain(false);
      // A commit after it: the next pass reads again, and shows the new task's backlog.
      await c.client(WorkflowService).startWorkflowExecution({ namespace: "q", workflowId: "q-1", workflowType: "T", taskQueue: "q" });
      const [task] = await db.select().from(replicationTasks).where(eq(replicationTasks.workflowId, "q-1"));
      await cleanup.runOnce();
      expect(parseCounter(metrics.render(), "replication_outbound_tasks_lag", { remote_cluster: "clusterY", shard: String(task!.shardId) }))
        .toBe(await db.$count(replicationTasks, eq(replicationTasks.shardId, task!.shardId)));
    } finally {
      await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, "clusterY"));
    }
  });

  test("NamespaceTasksGoOnceEveryRemoteAckedThem", async () => {
    const db = c.server.database.db;
    await c.client(WorkflowService).registerNamespace({ namespace: "n1", isGlobalNamespace: true });
    await c.client(WorkflowService).updateNamespace({ namespace: "n1", description: "two" });
    const ids = (await db.select({ id: namespaceReplicationTasks.taskId }).from(namespaceReplicationTasks)).map((r) => r.id).sort((x, y) => x - y);
    expect(ids.length).toBeGreaterThanOrEqual(2);
    const [self] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, true));
    await db.insert(clusterMetadata).values({ ...self!, clusterName: "clusterY", clusterId: "y", isCurrent: false, initialFailoverVersion: 8 });
    const cleanup = createReplicationCleanup({ db, log: c.server.log, graceMs: 0 });
    await cleanup.runOnce();
    expect(await db.$count(namespaceReplicationTasks)).toBe(ids.length); // Y acked nothing yet
    await db.insert(replicationAckLevels).values({ remoteCluster: "clusterY", direction: "outbound", queue: "namespace", shardId: 0, ackLevel: ids.at(-2)! });
    await cleanup.runOnce();
    expect((await db.select({ id: namespaceReplicationTasks.taskId }).from(namespaceReplicationTasks)).map((r) => r.id)).toEqual([ids.at(-1)!]);
    await db.delete(replicationAckLevels).where(eq(replicationAckLevels.remoteCluster, "clusterY"));
    await db.delete(clusterMetadata).where(eq(clusterMetadata.clusterName, "clusterY"));
  });
});
