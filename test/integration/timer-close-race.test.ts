import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { asc, eq } from "drizzle-orm";
import { createClusterDirectory } from "../../src/cluster/directory";
import { lockRun } from "../../src/history/execution-store";
import { createEventNotifier } from "../../src/history/notifier";
import { createTimerQueue } from "../../src/history/timer-queue";
import { createWriter } from "../../src/history/writer";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createNamespaceRegistry } from "../../src/namespace/registry";
import { createLogger } from "../../src/observability/log";
import { createMetrics } from "../../src/observability/metrics";
import type { Tx } from "../../src/persistence/database";
import { runStatement } from "../../src/persistence/raw-statements";
import { executions, historyEvents, timerTasks } from "../../src/persistence/schema";
import { eventually } from "../support/eventually";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/**
 * tx, whose second statement on a run's row or a timer waits for gate: held() is called when it
 * gets there, the transaction holding the lock its first such statement took.
 */
function pausedAtSecondRowLock(tx: Tx, gate: Promise<void>, held: () => void): Tx {
  const session = tx._.session;
  let rowStatements = 0;
  const paused = new Proxy(session, {
    get(target, p) {
      if (p !== "prepareQuery") return Reflect.get(target, p, target);
      return (...a: Parameters<typeof session.prepareQuery>) => {
        const query = target.prepareQuery(...a);
        if (!/"(timer_tasks|executions)"/.test(a[0].sql) || ++rowStatements !== 2) return query;
        const execute = query.execute.bind(query);
        query.execute = (async (...args: Parameters<typeof execute>) => {
          held();
          await gate;
          return execute(...args);
        }) as typeof query.execute;
        return query;
      };
    },
  });
  return new Proxy(tx, {
    get(target, p) {
      if (p === "session") return paused;
      if (p === "_") return { ...target._, session: paused };
      return Reflect.get(target, p);
    },
  });
}

// PGlite runs one transaction at a time: a fire and a close cannot both hold a lock there.
for (const store of (await testStores()).filter((s) => s === "postgres")) {
  describe(`a timer firing as its run closes (${store})`, () => {
    let c: TestCluster;
    beforeAll(async () => {
      c = await startTestCluster({ store, name: "clusterR", initialFailoverVersion: 1 });
    });
    afterAll(() => c.destroy());

    test("ATimerFiringAsItsRunClosesLocksTheRunFirst: the close waits for the fire, and neither is ended by a deadlock and made again", async () => {
      const db = c.server.database.db;
      const wf = c.client(WorkflowService);
      await wf.registerNamespace({ namespace: "race" });
      const { runId } = await wf.startWorkflowExecution({
        namespace: "race", workflowId: "w", workflowType: "T", taskQueue: "q", workflowExecutionTimeout: create(DurationSchema, { seconds: 3600n }),
      });
      const [timer] = await db.select().from(timerTasks).where(eq(timerTasks.runId, runId));
      const names = createNamespaceRegistry({ db, clusters: createClusterDirectory(db, c.server.cluster), cacheTtlMs: 60_000 });
      const ns = await names.getById(timer!.namespaceId);
      const log = createLogger({ level: "error" });
      const writer = createWriter({ db, cluster: c.server.cluster, limits: c.config.limits, metrics: createMetrics(), log, now: () => new Date() });

      const attempts = { fire: 0, close: 0 };
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      let held!: () => void;
      const holding = new Promise<void>((r) => (held = r));
      // The fire stops before its second row lock; every attempt is counted (a deadlock's loser is made again).
      const firing = {
        ...writer,
        transact: ((operation, fn, signal) => writer.transact(operation, (tx) => {
          attempts.fire++;
          return fn(pausedAtSecondRowLock(tx, gate, held));
        }, signal)) as typeof writer.transact,
      };
      // Its clock two hours on: the server's own queue, on the real clock, leaves the timer of 1 h alone.
      const queue = createTimerQueue({
        db, writer: firing, namespaces: names, notifier: createEventNotifier(), metrics: createMetrics(), log,
        currentCluster: "clusterR", now: () => new Date(Date.now() + 7_200_000), pollMs: 60_000,
      });
      try {
        queue.start();
        const fired = queue.rescan();
        await holding;
        // A terminate as the engine writes one from a read: the run's row, then (closing) its timers.
        const closing = writer.transact("TerminateWorkflowExecution", async (tx) => {
          attempts.close++;
          await writer.guard(tx, ns);
          const run = await lockRun(tx, ns.id, "w", runId);
          if (!run || run.status !== "RUNNING") return run?.status;
          await writer.append(tx, ns, run, {
            status: "TERMINATED",
            events: [{ attributes: { case: "workflowExecutionTerminatedEventAttributes", value: { reason: "r", identity: "" } as never } }],
          }, { guarded: true });
          return "TERMINATED";
        });
        // The close waits for the lock the fire holds; then the fire goes on.
        const lockWaits = async () => (await runStatement(db, "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'", []))[0]!.n;
        await eventually(async () => expect(await lockWaits()).toBe(1));
        release();
        await fired;
        expect(await closing).toBe("TIMED_OUT");
      } finally {
        release();
        await queue.stop();
      }
      expect(attempts).toEqual({ fire: 1, close: 1 });
      const [run] = await db.select({ status: executions.status }).from(executions).where(eq(executions.runId, runId));
      expect(run!.status).toBe("TIMED_OUT");
      const events = await db.select({ eventType: historyEvents.eventType }).from(historyEvents).where(eq(historyEvents.runId, runId)).orderBy(asc(historyEvents.eventId));
      expect(events.map((e) => e.eventType)).toEqual(["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_TIMED_OUT"]);
      expect(await db.$count(timerTasks, eq(timerTasks.runId, runId))).toBe(0);
    });
  });
}
