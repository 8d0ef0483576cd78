import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { runTern, startClusterProcess, type ClusterProcess } from "../../scripts/lib/cluster-process";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { createTestDatabase } from "../support/postgres";
import { testStores } from "../support/stores";
import { startTcpProxyFor, type TcpProxy } from "../support/tcp-proxy";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** The entry's grace for open requests after a stop signal (src/entry/boot.ts). */
const GRACE_MS = 5_000;

const client = (p: ClusterProcess) => createClient(WorkflowService, createConnectTransport({ baseUrl: `http://${p.address}` }));

for (const store of await testStores()) {
  describe(`stopping a server that peers long-poll, on ${store}`, () => {
    const dir = mkdtempSync(join(tmpdir(), "tern-shutdown-"));
    const dbs: { url: string; drop(): Promise<void> }[] = [];
    let a: ClusterProcess, b: ClusterProcess;
    beforeAll(async () => {
      if (store === "postgres") dbs.push(await createTestDatabase(), await createTestDatabase());
      [a, b] = await Promise.all([
        startClusterProcess({ name: "clusterA", initialFailoverVersion: 1, dir, databaseUrl: dbs[0]?.url }),
        startClusterProcess({ name: "clusterB", initialFailoverVersion: 2, dir, databaseUrl: dbs[1]?.url }),
      ]);
      for (const [x, y] of [[a, b], [b, a]] as const) {
        expect((await runTern(["-address", x.address, "admin", "cluster", "upsert-remote-cluster", "--frontend_address", y.address])).code).toBe(0);
      }
    });
    afterAll(async () => {
      await Promise.all([a?.stop(), b?.stop()]);
      for (const d of dbs) await d.drop();
      rmSync(dir, { recursive: true, force: true });
    });

    test("SIGTERM answers open long polls at once: exit 0 well inside the grace, no error logged", async () => {
      await client(a).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"], activeClusterName: "clusterA" });
      await client(a).startWorkflowExecution({ namespace: "orders", workflowId: "w", workflowType: "t", taskQueue: "q" });
      // B pulls A's history shards and namespace queue: its long polls are open on A now.
      await eventually(async () => {
        const res = await client(b).getWorkflowExecutionHistory({ namespace: "orders", execution: { workflowId: "w" } });
        expect(res.history!.events.length).toBe(1);
      }, { timeout: 20_000 });
      // A client's history long poll on A, too, asked to wait 30 s for a new event.
      const first = await client(a).getWorkflowExecutionHistory({ namespace: "orders", execution: { workflowId: "w" }, waitNewEvent: true });
      expect(first.history!.events.length).toBe(1);
      const waiting = client(a).getWorkflowExecutionHistory({
        namespace: "orders", execution: { workflowId: "w" }, waitNewEvent: true, nextPageToken: first.nextPageToken, waitTimeout: { seconds: 30n },
      });
      await Bun.sleep(300); // the poll reaches A and waits (nothing to observe from here)

      const t0 = performance.now();
      const code = await a.stop(30_000);
      const stoppedMs = performance.now() - t0;
      expect(code).toBe(0);
      // Without ending the long polls first, the listener waits the whole grace out on them.
      expect(stoppedMs).toBeLessThan(GRACE_MS * 0.6);
      // The waiting client got an answer (no new event), not a cut connection.
      const answered = await waiting;
      expect(answered.history?.events ?? []).toEqual([]);
      const errors = readFileSync(a.logPath, "utf8").split("\n").filter((l) => /"level":"error"/.test(l));
      expect(errors).toEqual([]);
    });
  });
}

if ((await testStores()).includes("postgres")) {
  describe("stopping a passive cluster whose replication writes wait for a lock, on postgres", () => {
    const dir = mkdtempSync(join(tmpdir(), "tern-shutdown-apply-"));
    const dbs: { url: string; drop(): Promise<void> }[] = [];
    let a: ClusterProcess, b: ClusterProcess;
    let held: postgres.ReservedSql | undefined;
    let sql: postgres.Sql;
    const startB = (port?: number) => startClusterProcess({ name: "clusterB", initialFailoverVersion: 2, dir, databaseUrl: dbs[1]!.url, port });
    beforeAll(async () => {
      dbs.push(await createTestDatabase(), await createTestDatabase());
      sql = postgres(dbs[1]!.url, { max: 2, onnotice: () => {} });
      [a, b] = await Promise.all([startClusterProcess({ name: "clusterA", initialFailoverVersion: 1, dir, databaseUrl: dbs[0]!.url }), startB()]);
      for (const [x, y] of [[a, b], [b, a]] as const) {
        expect((await runTern(["-address", x.address, "admin", "cluster", "upsert-remote-cluster", "--frontend_address", y.address])).code).toBe(0);
      }
    });
    afterAll(async () => {
      await release();
      await sql?.end({ timeout: 1 });
      await Promise.all([a?.stop(), b?.stop()]);
      for (const d of dbs) await d.drop();
      rmSync(dir, { recursive: true, force: true });
    });

    /** Another session on B's database holds a lock every event insert waits for (lockTimeoutMs: 10 s by default). */
    async function holdEventInserts(): Promise<void> {
      held = await sql.reserve();
      await held.unsafe("begin");
      await held.unsafe("lock table history_events in share mode");
    }
    async function release(): Promise<void> {
      await held?.unsafe("rollback").catch(() => {});
      held?.release();
      held = undefined;
    }
    /** Waits until one of B's writes waits for that lock (or, with waitedFor false, lets the caller say it waits), then stops B; resolves to how long the stop took. */
    async function stopWhileWaiting(waitedFor = true): Promise<number> {
      if (waitedFor) await eventually(async () => {
        const [w] = await sql`select count(*)::int as n from pg_locks l join pg_class c on c.oid = l.relation where c.relname = 'history_events' and not l.granted`;
        expect(w!.n).toBeGreaterThan(0);
      }, { timeout: 20_000 });
      const t0 = performance.now();
      expect(await b.stop(30_000)).toBe(0);
      const stoppedMs = performance.now() - t0;
      const failures = readFileSync(b.logPath, "utf8").split("\n").filter((l) => /"level":"(warn|error)"/.test(l) && /failed/.test(l) && !/replication stream failed/.test(l));
      expect(failures).toEqual([]);
      await release();
      b = await startB(b.port);
      return stoppedMs;
    }
    const historyOn = async (p: ClusterProcess, namespace: string, workflowId: string) =>
      (await client(p).getWorkflowExecutionHistory({ namespace, execution: { workflowId } })).history!.events.map((e) => Number(e.eventId));

    test("SIGTERM cancels a replication apply waiting for the lock: B exits 0 well inside the grace, not after the lock timeout, and applies the task once restarted", async () => {
      await client(a).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"], activeClusterName: "clusterA" });
      await eventually(async () => expect((await sql`select count(*)::int as n from namespaces where name = 'orders'`)[0]!.n).toBe(1), { timeout: 20_000 });
      await holdEventInserts();
      await client(a).startWorkflowExecution({ namespace: "orders", workflowId: "w", workflowType: "t", taskQueue: "q" });
      // Before, the stop waited for the apply to fail at the lock timeout (and then for the next path's try).
      expect(await stopWhileWaiting()).toBeLessThan(GRACE_MS * 0.6);
      await eventually(async () => expect(await historyOn(b, "orders", "w")).toEqual([1]), { timeout: 20_000 });
    });

    test("SIGTERM cancels a one-statement apply (a run B applied lately) waiting for the run's row lock: B exits 0 well inside the grace, and applies the page once restarted", async () => {
      await client(a).registerNamespace({ namespace: "trips", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"], activeClusterName: "clusterA" });
      await eventually(async () => expect((await sql`select count(*)::int as n from namespaces where name = 'trips'`)[0]!.n).toBe(1), { timeout: 20_000 });
      await client(a).startWorkflowExecution({ namespace: "trips", workflowId: "trip", workflowType: "t", taskQueue: "q" });
      const signal = () => client(a).signalWorkflowExecution({ namespace: "trips", workflowExecution: { workflowId: "trip" }, signalName: "s" });
      // Applied in a transaction first; then, the shard's apply holding, the next page goes as one statement.
      await signal();
      await eventually(async () => expect(await historyOn(b, "trips", "trip")).toEqual([1, 2]), { timeout: 20_000 });
      await signal();
      await eventually(async () => expect(await historyOn(b, "trips", "trip")).toEqual([1, 2, 3]), { timeout: 20_000 });
      held = await sql.reserve();
      await held.unsafe("begin");
      await held.unsafe("select 1 from executions where workflow_id = 'trip' for update");
      await signal();
      await eventually(async () => {
        const [w] = await sql`select count(*)::int as n from pg_stat_activity where application_name = 'tern-apply' and wait_event_type = 'Lock'`;
        expect(w!.n).toBeGreaterThan(0);
      }, { timeout: 20_000 });
      // Before, the stop waited for the statement to fail at the lock timeout.
      expect(await stopWhileWaiting(false)).toBeLessThan(GRACE_MS * 0.6);
      await eventually(async () => expect(await historyOn(b, "trips", "trip")).toEqual([1, 2, 3, 4]), { timeout: 20_000 });
    });

    test("SIGTERM cancels a namespace task's apply waiting for the namespace's row lock: B exits 0 well inside the grace, and applies the change once restarted", async () => {
      await client(a).registerNamespace({ namespace: "billing", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"], activeClusterName: "clusterA" });
      await eventually(async () => expect((await sql`select count(*)::int as n from namespaces where name = 'billing'`)[0]!.n).toBe(1), { timeout: 20_000 });
      // Another session holds billing's row on B, which the apply locks first (lockTimeoutMs: 10 s by default).
      held = await sql.reserve();
      await held.unsafe("begin");
      await held.unsafe("select 1 from namespaces where name = 'billing' for update");
      await client(a).updateNamespace({ namespace: "billing", description: "moved" });
      await eventually(async () => {
        const [w] = await sql`select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query ilike '%namespaces%for update%'`;
        expect(w!.n).toBeGreaterThan(0);
      }, { timeout: 20_000 });
      // Before, the stop waited for the apply to fail at the lock timeout.
      expect(await stopWhileWaiting(false)).toBeLessThan(GRACE_MS * 0.6);
      await eventually(async () => expect((await sql`select description from namespaces where name = 'billing'`)[0]!.description).toBe("moved"), { timeout: 20_000 });
    });

    test("SIGTERM cancels a backfill page waiting for the lock: B exits 0 well inside the grace, and the backfill completes once restarted", async () => {
      await client(a).registerNamespace({ namespace: "legacy", isGlobalNamespace: true, clusters: ["clusterA"], activeClusterName: "clusterA" });
      await client(a).startWorkflowExecution({ namespace: "legacy", workflowId: "old", workflowType: "t", taskQueue: "q" });
      await holdEventInserts();
      // B joins the namespace: it backfills "old", which replication never carried.
      await client(a).updateNamespace({ namespace: "legacy", clusters: ["clusterA", "clusterB"] });
      expect(await stopWhileWaiting()).toBeLessThan(GRACE_MS * 0.6);
      await eventually(async () => expect(await historyOn(b, "legacy", "old")).toEqual([1]), { timeout: 20_000 });
    });
  });
}

if ((await testStores()).includes("postgres")) {
  describe("stopping a server whose background work waits (timers, planner statistics, task cleanup), on postgres", () => {
    const dir = mkdtempSync(join(tmpdir(), "tern-shutdown-timers-"));
    let db: { url: string; drop(): Promise<void> };
    let sql: postgres.Sql;
    let a: ClusterProcess;
    const startA = (port?: number) => startClusterProcess({ name: "clusterA", initialFailoverVersion: 1, dir, databaseUrl: db.url, port });
    const due = async () => (await sql`select count(*)::int as n from timer_tasks`)[0]!.n as number;
    beforeAll(async () => {
      db = await createTestDatabase();
      sql = postgres(db.url, { max: 2, onnotice: () => {} });
      a = await startA();
    });
    afterAll(async () => {
      await sql?.end({ timeout: 1 });
      await a?.stop();
      await db?.drop();
      rmSync(dir, { recursive: true, force: true });
    });

    /**
     * Holds `lock` in another session while setup runs, waits until a statement of A's matching
     * `waiting` (ILIKE) waits for it, stops A and lets go: how long the stop took.
     */
    async function stopWhileHeld(lock: string, setup: () => Promise<unknown>, waiting: string, notLogged: string): Promise<number> {
      const held = await sql.reserve();
      try {
        await held.unsafe("begin");
        await held.unsafe(lock);
        await setup();
        await eventually(async () => {
          const [w] = await sql`select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query ilike ${waiting}`;
          expect(w!.n).toBeGreaterThan(0);
        }, { timeout: 20_000 });
        const t0 = performance.now();
        expect(await a.stop(60_000)).toBe(0);
        const stoppedMs = performance.now() - t0;
        expect(readFileSync(a.logPath, "utf8")).not.toContain(notLogged);
        return stoppedMs;
      } finally {
        await held.unsafe("rollback").catch(() => {});
        held.release();
      }
    }

    test("SIGTERM while the planner statistics' ANALYZE waits for a lock: exit 0 well inside the grace, nothing logged as failed", async () => {
      try {
        // The lock ANALYZE takes (writes go on beside it); then enough runs that the next check (every 5 s) analyzes executions.
        const stoppedMs = await stopWhileHeld("lock table executions in share update exclusive mode", async () => {
          await client(a).registerNamespace({ namespace: "stats" });
          await Promise.all(Array.from({ length: 150 }, (_, k) => client(a).startWorkflowExecution({ namespace: "stats", workflowId: `s-${k}`, workflowType: "t", taskQueue: "q" })));
        }, "analyze%", "gathering planner statistics failed");
        // Before, the stop waited for the ANALYZE to fail at the lock timeout.
        expect(stoppedMs).toBeLessThan(GRACE_MS * 0.6);
      } finally {
        a = await startA(a.port);
      }
    });

    test("SIGTERM while the replication task cleanup waits for a lock: exit 0 well inside the grace, nothing logged as failed", async () => {
      try {
        // The lock the cleanup's DELETE waits for; its next pass comes within its 10 s interval.
        const stoppedMs = await stopWhileHeld("lock table replication_tasks in share mode", async () => {}, "delete from%replication_tasks%", "replication task cleanup failed");
        // Before, the stop waited for the cleanup's DELETE to fail at the lock timeout.
        expect(stoppedMs).toBeLessThan(GRACE_MS * 0.6);
      } finally {
        a = await startA(a.port);
      }
    });

    test("SIGTERM while due timers fire: exit 0 well inside the grace, the rest left due and fired by the next start", async () => {
      // A backlog the stop comes in the middle of: the queue fires batches of 50 (1,750 to 3,100
      // timers a second on PostgreSQL, timer-queue.ts) and the stop takes under 0.1 s, so 500,
      // ten batches, could all be fired before it.
      const runs = 2000;
      await client(a).registerNamespace({ namespace: "orders" });
      for (let i = 0; i < runs; i += 100) {
        await Promise.all(Array.from({ length: 100 }, (_, k) => client(a).startWorkflowExecution({
          namespace: "orders", workflowId: `t-${i + k}`, workflowType: "t", taskQueue: "q", workflowExecutionTimeout: { seconds: 3600n },
        })));
      }
      // Their timeouts come due while the server is down (as after an outage): the next start fires them all.
      expect(await a.stop()).toBe(0);
      await sql`update timer_tasks set fire_at = now() - interval '1 second'`;
      a = await startA(a.port);
      await eventually(async () => expect(await due()).toBeLessThan(runs), { timeout: 20_000 });

      const t0 = performance.now();
      expect(await a.stop(60_000)).toBe(0);
      const stoppedMs = performance.now() - t0;
      // Before, the stop fired every due timer first, leaving none (2,000 took it 4 to 10 s).
      expect(await due()).toBeGreaterThan(0);
      expect(stoppedMs).toBeLessThan(GRACE_MS * 0.6);

      a = await startA(a.port);
      await eventually(async () => expect(await due()).toBe(0), { timeout: 60_000 });
      const [closed] = await sql`select count(*)::int as n from executions where status = 'TIMED_OUT'`;
      expect(closed!.n).toBe(runs);
    });

    test("SIGTERM while a timer's fire waits for a lock: exit 0 well inside the grace, the timer left due and fired by the next start", async () => {
      await client(a).startWorkflowExecution({ namespace: "orders", workflowId: "late", workflowType: "t", taskQueue: "q", workflowExecutionTimeout: { seconds: 3600n } });
      // Another session holds the run's row, which the fire locks first (lockTimeoutMs: 10 s by default).
      const stoppedMs = await stopWhileHeld("select 1 from executions where workflow_id = 'late' for update", () => sql`update timer_tasks set fire_at = now() - interval '1 second'`, "%executions%for update%", "timer failed to fire");
      // Before, the stop waited for the fire to fail at the lock timeout.
      expect(stoppedMs).toBeLessThan(GRACE_MS * 0.6);
      expect(await due()).toBe(1);
      a = await startA(a.port);
      await eventually(async () => expect(await due()).toBe(0), { timeout: 20_000 });
      const [run] = await sql`select status from executions where workflow_id = 'late'`;
      expect(run!.status).toBe("TIMED_OUT");
    });
  });
}

if ((await testStores()).includes("postgres")) {
  describe("stopping a server whose PostgreSQL stopped answering, on postgres", () => {
    const dir = mkdtempSync(join(tmpdir(), "tern-shutdown-frozen-"));
    let db: { url: string; drop(): Promise<void> };
    let proxy: TcpProxy;
    let a: ClusterProcess;
    beforeAll(async () => {
      db = await createTestDatabase();
      const through = await startTcpProxyFor(db.url);
      proxy = through.proxy;
      a = await startClusterProcess({ name: "clusterA", initialFailoverVersion: 1, dir, databaseUrl: through.url });
    });
    afterAll(async () => {
      proxy?.stall("toServer", false);
      proxy?.stall("toClient", false);
      await a?.crash();
      await proxy?.close();
      await db?.drop();
      rmSync(dir, { recursive: true, force: true });
    });

    test("SIGTERM ends it within the grace and the stop limit, exit 1 saying so, where it waited for the database for good", async () => {
      await client(a).registerNamespace({ namespace: "orders" });
      await client(a).startWorkflowExecution({ namespace: "orders", workflowId: "w", workflowType: "t", taskQueue: "q" });
      // A frozen database (or a link that drops its packets): nothing it is sent is answered.
      proxy.stall("toServer", true);
      proxy.stall("toClient", true);
      const waiting = client(a).signalWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: "w" }, signalName: "s" }).catch((e) => e);
      await Bun.sleep(300); // the signal reaches the server and waits on the database (nothing to observe from here)
      const t0 = performance.now();
      // Before, the stop waited on its background work's statements for ever (killed here after 30 s).
      expect(await a.stop(30_000)).toBe(1);
      expect(performance.now() - t0).toBeLessThan(GRACE_MS + 13_000);
      expect(readFileSync(a.logPath, "utf8")).toContain(`"msg":"did not stop in time; exiting without closing the database"`);
      expect(await waiting).toBeInstanceOf(Error);
    });
  });
}
