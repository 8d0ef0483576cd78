import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { startClusterProcess, type ClusterProcess } from "../../scripts/lib/cluster-process";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { eq, sql } from "drizzle-orm";
import { createClusterDirectory } from "../../src/cluster/directory";
import { createEventNotifier } from "../../src/history/notifier";
import { createTimerQueue } from "../../src/history/timer-queue";
import { createWriter } from "../../src/history/writer";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createNamespaceRegistry } from "../../src/namespace/registry";
import { createLogger } from "../../src/observability/log";
import { createMetrics } from "../../src/observability/metrics";
import { namespaces, timerTasks } from "../../src/persistence/schema";
import { eventually } from "../support/eventually";
import { notedStatements } from "../replication/support";
import { createTestDatabase } from "../support/postgres";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { answeredWithin, serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

for (const store of await testStores()) {
  describe(`a backlog of due timers (${store})`, () => {
    let c: TestCluster;
    beforeAll(async () => {
      c = await startTestCluster({ store, name: "clusterB", initialFailoverVersion: 1 });
    });
    afterAll(() => c.destroy());

    /** runs runs of a new global namespace, each with a timeout of an hour: due for a queue whose clock is two hours on. */
    async function backlog(namespace: string, runs: number): Promise<string> {
      const wf = c.client(WorkflowService);
      await wf.registerNamespace({ namespace, isGlobalNamespace: true });
      for (let i = 0; i < runs; i += 50) {
        await Promise.all(Array.from({ length: Math.min(50, runs - i) }, (_, k) => wf.startWorkflowExecution({
          namespace, workflowId: `w-${i + k}`, workflowType: "T", taskQueue: "q", workflowExecutionTimeout: create(DurationSchema, { seconds: 3600n }),
        })));
      }
      const [ns] = await c.server.database.db.select({ id: namespaces.id }).from(namespaces).where(eq(namespaces.name, namespace));
      return ns!.id;
    }

    /**
     * A timer queue on the server's database (or db: the same, its statements noted), two hours
     * ahead (the server's own leaves the timers alone) unless aheadMs says; beforeCommit sees each FireTimer transaction.
     */
    function queueAhead(beforeCommit: () => void, { db = c.server.database.db, aheadMs = 7_200_000 } = {}) {
      const log = createLogger({ level: "error" });
      const writer = createWriter({
        db, pipelined: c.server.database.pipelined, cluster: c.server.cluster, limits: c.config.limits, metrics: createMetrics(), log, now: () => new Date(),
        beforeCommit: (operation) => (operation === "FireTimer" ? beforeCommit() : undefined),
      });
      const names = createNamespaceRegistry({ db, clusters: createClusterDirectory(db, c.server.cluster), cacheTtlMs: 60_000 });
      return createTimerQueue({
        db, writer, namespaces: names, notifier: createEventNotifier(), metrics: createMetrics(), log,
        currentCluster: "clusterB", now: () => new Date(Date.now() + aheadMs), pollMs: 60_000,
      });
    }

    /** Per run of the namespace: its status, its timeout events, its replication tasks, its timers. */
    async function runsOf(namespaceId: string): Promise<{ status: string; timeouts: number; tasks: number; timers: number }[]> {
      return rowsOf(await c.server.database.db.execute(sql`
        select e.status,
          (select count(*)::int from history_events h where h.run_id = e.run_id and h.event_type = 'WORKFLOW_EXECUTION_TIMED_OUT') as timeouts,
          (select count(*)::int from replication_tasks r where r.run_id = e.run_id) as tasks,
          (select count(*)::int from timer_tasks t where t.run_id = e.run_id) as timers
        from executions e where e.namespace_id = ${namespaceId} order by e.workflow_id`));
    }
    /** A statement's rows, from either driver (PGlite answers with rows, postgres.js with the list). */
    const rowsOf = <T,>(result: unknown) => ((result as { rows?: T[] }).rows ?? result) as T[];

    test("AnIdleScanIsOneStatement: a scan that finds nothing due reads once, and still wakes for the timer due next", async () => {
      const wf = c.client(WorkflowService);
      await wf.registerNamespace({ namespace: "idle-scan", isGlobalNamespace: true });
      await wf.startWorkflowExecution({
        namespace: "idle-scan", workflowId: "w", workflowType: "T", taskQueue: "q", workflowExecutionTimeout: create(DurationSchema, { seconds: 3n }),
      });
      const { db, ran } = notedStatements(c.server.database.db);
      const queue = queueAhead(() => {}, { db, aheadMs: 0 });
      queue.start();
      // Two scans (start's, then the one rescan asks for while it runs), nothing due in either.
      await queue.rescan();
      try {
        expect(ran.length).toBe(2);
        // The run's timeout (3 s) was read with them: the queue scans then, not at its poll (60 s).
        await eventually(() => expect(ran.length).toBeGreaterThan(2), { timeout: answeredWithin(3_000) });
      } finally {
        await queue.stop();
      }
    });

    test("ABacklogOfDueTimersFiresInFewTransactions: 240 due timers each close their run once, with its event and replication task, in batches", async () => {
      const id = await backlog("drain", 240);
      let transactions = 0;
      const queue = queueAhead(() => void transactions++);
      try {
        queue.start();
        await queue.rescan();
      } finally {
        await queue.stop();
      }
      const runs = await runsOf(id);
      expect(runs).toHaveLength(240);
      expect(runs.filter((r) => !(r.status === "TIMED_OUT" && r.timeouts === 1 && r.tasks === 2 && r.timers === 0))).toEqual([]);
      // A fire per transaction took 240 of them.
      expect(transactions).toBeLessThanOrEqual(10);
      // Each shard's task ids are its own and without gaps: no task id taken twice or skipped by the batches' appends.
      const gaps = rowsOf<{ n: number; span: number }>(await c.server.database.db.execute(sql`
        select shard_id, count(*)::int as n, (max(task_id) - min(task_id) + 1)::int as span from replication_tasks group by shard_id`));
      expect(gaps.filter((g) => g.n !== g.span)).toEqual([]);
    });

    test("ABatchThatFailsAtItsCommitLeavesItsTimersDue: a fire lost mid-drain writes none of its runs, and the next scan fires each once", async () => {
      const id = await backlog("lost", 120);
      let transactions = 0;
      let down = true;
      // From the second batch on, each loses its connection before its COMMIT, as a server killed then: the scan fails (and its retries).
      const queue = queueAhead(() => {
        if (++transactions >= 2 && down) throw Object.assign(new Error("write CONNECTION_CLOSED 127.0.0.1:5432"), { code: "CONNECTION_CLOSED" });
      });
      try {
        queue.start();
        await queue.rescan();
        const after = await runsOf(id);
        const closed = after.filter((r) => r.status === "TIMED_OUT");
        expect(closed.length).toBeGreaterThan(0);
        expect(closed.length).toBeLessThan(120);
        // Every run wholly fired or wholly due: none half written.
        expect(closed.filter((r) => !(r.timeouts === 1 && r.tasks === 2 && r.timers === 0))).toEqual([]);
        expect(after.filter((r) => r.status === "RUNNING" && !(r.timeouts === 0 && r.tasks === 1 && r.timers === 1))).toEqual([]);
        down = false;
        await queue.rescan();
      } finally {
        await queue.stop();
      }
      const runs = await runsOf(id);
      expect(runs.filter((r) => !(r.status === "TIMED_OUT" && r.timeouts === 1 && r.tasks === 2 && r.timers === 0))).toEqual([]);
    });

    test("ATimerWhoseRunRefusesItsEventDoesNotHoldUpItsBatch: the others fire, it stays due", async () => {
      const id = await backlog("poisoned", 60);
      const db = c.server.database.db;
      await db.execute(sql.raw(`create function refuse_w7() returns trigger language plpgsql as $$
        begin if new.workflow_id = 'w-7' and new.event_id > 1 then raise exception 'refused for the test'; end if; return new; end $$`));
      await db.execute(sql.raw("create trigger refuse_w7 before insert on history_events for each row execute function refuse_w7()"));
      const queue = queueAhead(() => {});
      try {
        queue.start();
        await queue.rescan();
      } finally {
        await queue.stop();
        await db.execute(sql.raw("drop trigger refuse_w7 on history_events"));
        await db.execute(sql.raw("drop function refuse_w7"));
      }
      const runs = await runsOf(id);
      expect(runs.filter((r) => r.status === "TIMED_OUT")).toHaveLength(59);
      expect(await db.$count(timerTasks, eq(timerTasks.namespaceId, id))).toBe(1);
    });

    if (store === "postgres") {
      test("TwoQueuesDrainingOneBacklogFireEachTimerOnce: as two servers on one database", async () => {
        const id = await backlog("shared", 200);
        const [one, two] = [queueAhead(() => {}), queueAhead(() => {})];
        try {
          one.start();
          two.start();
          await Promise.all([one.rescan(), two.rescan()]);
        } finally {
          await Promise.all([one.stop(), two.stop()]);
        }
        const runs = await runsOf(id);
        expect(runs).toHaveLength(200);
        expect(runs.filter((r) => !(r.status === "TIMED_OUT" && r.timeouts === 1 && r.tasks === 2 && r.timers === 0))).toEqual([]);
      });
    }
  });
}

if ((await testStores()).includes("postgres")) {
  describe("a server killed while it drains a backlog of due timers (postgres)", () => {
    const dir = mkdtempSync(join(tmpdir(), "tern-timer-backlog-"));
    let db: { url: string; drop(): Promise<void> };
    let pg: postgres.Sql;
    let a: ClusterProcess | undefined;
    const startA = (port?: number) => startClusterProcess({ name: "clusterA", initialFailoverVersion: 1, dir, databaseUrl: db.url, port });
    beforeAll(async () => {
      db = await createTestDatabase();
      pg = postgres(db.url, { max: 2, onnotice: () => {} });
    });
    afterAll(async () => {
      await pg?.end({ timeout: 1 });
      await a?.crash();
      await db?.drop();
      rmSync(dir, { recursive: true, force: true });
    });

    /** Runs not wholly fired (closed, one timeout event, its task, no timer) nor wholly due (open, no timeout, one task, its timer). */
    const halfFired = async () => (await pg`
      select count(*)::int as n from (select e.status,
        (select count(*) from history_events h where h.run_id = e.run_id and h.event_type = 'WORKFLOW_EXECUTION_TIMED_OUT') as timeouts,
        (select count(*) from replication_tasks r where r.run_id = e.run_id) as tasks,
        (select count(*) from timer_tasks t where t.run_id = e.run_id) as timers
      from executions e) as r
      where not ((status = 'TIMED_OUT' and timeouts = 1 and tasks = 2 and timers = 0) or (status = 'RUNNING' and timeouts = 0 and tasks = 1 and timers = 1))`)[0]!.n as number;
    const due = async () => (await pg`select count(*)::int as n from timer_tasks`)[0]!.n as number;

    test("AServerKilledMidDrainLosesAndDoublesNoFire: every run wholly fired or wholly due, and the next start fires each due one once", async () => {
      const runs = 2000;
      a = await startA();
      const wf = createClient(WorkflowService, createConnectTransport({ baseUrl: `http://${a.address}` }));
      await wf.registerNamespace({ namespace: "orders", isGlobalNamespace: true });
      for (let i = 0; i < runs; i += 100) {
        await Promise.all(Array.from({ length: 100 }, (_, k) => wf.startWorkflowExecution({
          namespace: "orders", workflowId: `t-${i + k}`, workflowType: "t", taskQueue: "q", workflowExecutionTimeout: create(DurationSchema, { seconds: 3600n }),
        })));
      }
      expect(await a.stop()).toBe(0);
      await pg`update timer_tasks set fire_at = now() - interval '1 second'`;
      a = await startA(a.port);
      await eventually(async () => expect(await due()).toBeLessThan(runs), { timeout: 20_000, interval: 5 });
      await a.crash();
      expect(await due()).toBeGreaterThan(0);
      expect(await halfFired()).toBe(0);

      a = await startA(a.port);
      await eventually(async () => expect(await due()).toBe(0), { timeout: 60_000 });
      expect(await halfFired()).toBe(0);
    });
  });
}
