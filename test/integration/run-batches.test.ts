import { beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { and, eq, like, sql } from "drizzle-orm";
import { createHistoryApplier } from "../../replication/applier";
import type { CurrentCluster } from "../../src/cluster/bootstrap";
import { eventFromRow } from "../../src/history/events";
import { insertExecution, type ExecutionRow } from "../../src/history/execution-store";
import { lockRunKeys, lockRuns, saveRuns } from "../../src/history/run-batches";
import type { NamespaceRecord, NamespaceRegistry } from "../../src/namespace/registry";
import { createLogger } from "../../src/observability/log";
import type { Tx } from "../../src/persistence/database";
import { runStatement } from "../../src/persistence/raw-statements";
import { executions, historyEvents, requestIds, timerTasks } from "../../src/persistence/schema";
import { useTestDatabase } from "../support/server";
import { eventually } from "../support/eventually";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

/** tx, counting the statements issued on it and keeping their texts and parameters (every statement here goes through prepareQuery). */
function counting(tx: Tx) {
  const texts: string[] = [];
  const params: unknown[][] = [];
  const session = tx._.session;
  const wrapped = { _: { session: { prepareQuery: (...a: Parameters<typeof session.prepareQuery>) => (texts.push(a[0].sql), params.push(a[0].params), session.prepareQuery(...a)) } } };
  return { tx: wrapped as unknown as Tx, statements: () => texts.length, texts, params };
}

type PlanNode = { "Node Type": string; "Relation Name"?: string; "Index Name"?: string; Plans?: PlanNode[] };
const planNodes = (node: PlanNode): PlanNode[] => [node, ...(node.Plans ?? []).flatMap(planNodes)];
const literal = (p: unknown) => (p === null ? "null" : `'${String(p).replaceAll("'", "''")}'`);

/**
 * How PostgreSQL reads executions for the statement text with params, as a prepared statement
 * (postgres.js prepares every one) planned for these params (custom) or for any (generic, which
 * it keeps after five executions when that costs no more): each scan of executions, by index.
 */
async function executionsScans(tx: Tx, text: string, params: unknown[], mode: "force_custom_plan" | "force_generic_plan"): Promise<string[]> {
  await runStatement(tx, `set local plan_cache_mode = ${mode}`, []);
  await runStatement(tx, `prepare planned as ${text}`, []);
  const [row] = await runStatement(tx, `explain (format json) execute planned(${params.map(literal).join(", ")})`, []);
  await runStatement(tx, "deallocate planned", []);
  const plan = row!["QUERY PLAN"];
  const [{ Plan }] = (typeof plan === "string" ? JSON.parse(plan) : plan) as [{ Plan: PlanNode }];
  return planNodes(Plan).filter((n) => n["Relation Name"] === "executions").map((n) => `${n["Node Type"]} ${n["Index Name"] ?? ""}`.trim());
}

const NS = "ns-1";
const run = (i: number) => ({
  namespaceId: NS, workflowId: `wf-${i}`, runId: `run-${i}`, shardId: 1, workflowType: "T", taskQueue: "q", status: "RUNNING",
  startTime: new Date(Date.UTC(2026, 0, 1, 0, 0, i)), nextEventId: 2, lastWriteVersion: 1, versionHistory: [{ eventId: 1, version: 1 }],
});

for (const store of await testStores()) {
  describe(`statements over many runs at once on ${store}`, () => {
    const opened = useTestDatabase(store);
    const rowOf = async (i: number) => (await opened.database.db.select().from(executions).where(and(eq(executions.workflowId, `wf-${i}`), eq(executions.runId, `run-${i}`))))[0]!;

    beforeAll(async () => {
      await opened.database.db.transaction((tx) => Promise.all([1, 2, 3].map((i) => insertExecution(tx, run(i)))));
    });

    test("ManyRunsLockInTwoStatements: the runs that exist come back by key, a missing one is absent", async () => {
      const keys = [3, 1, 4, 2].map((i) => ({ namespaceId: NS, workflowId: `wf-${i}`, runId: `run-${i}` }));
      const found = await opened.database.db.transaction(async (tx) => {
        const c = counting(tx);
        const [, runs] = await Promise.all([lockRunKeys(c.tx, keys), lockRuns(c.tx, keys)]);
        expect(c.statements()).toBe(2);
        return runs;
      });
      expect([...found.keys()].sort()).toEqual([`${NS}/wf-1/run-1`, `${NS}/wf-2/run-2`, `${NS}/wf-3/run-3`]);
      expect(found.get(`${NS}/wf-2/run-2`)).toEqual(await rowOf(2));
    });

    test("SaveRunsWritesEachRunsOwnState: one statement, every field as given, db_version bumped", async () => {
      const prev = await Promise.all([1, 2].map(rowOf));
      const next = (r: ExecutionRow, i: number) => ({
        status: i ? "COMPLETED" : "RUNNING", closeTime: i ? new Date(Date.UTC(2026, 0, 2)) : null, nextEventId: 5 + i, lastWriteVersion: 101,
        versionHistory: [...r.versionHistory, { eventId: 4 + i, version: 101 }], cancelRequested: i === 0,
      });
      await opened.database.db.transaction(async (tx) => {
        const c = counting(tx);
        await saveRuns(c.tx, prev.map((r, i) => ({ prev: r, next: next(r, i) })));
        expect(c.statements()).toBe(1);
      });
      for (const [i, r] of prev.entries()) expect(await rowOf(i + 1)).toEqual({ ...r, ...next(r, i), dbVersion: r.dbVersion + 1 });
    });

    test("SaveRunsRefusesAStaleRun: one run written since it was read fails the statement of 2 runs or of 20, and nothing is saved", async () => {
      const more = Array.from({ length: 18 }, (_, i) => 40 + i);
      await opened.database.db.transaction((tx) => Promise.all(more.map((i) => insertExecution(tx, run(i)))));
      // 2 runs and 20 (padded to 32): two texts of the statement.
      for (const page of [[1, 2], [1, 2, ...more]]) {
        const read = await Promise.all(page.map(rowOf));
        const saves = read.map((prev, i) => ({ prev: i === 1 ? { ...prev, dbVersion: prev.dbVersion - 1 } : prev, next: { nextEventId: 99 } }));
        const saving = opened.database.db.transaction((tx) => saveRuns(tx, saves));
        await expect(saving).rejects.toThrow(`one or more of ${page.length} executions changed since they were read`);
        expect(await Promise.all(page.map(rowOf))).toEqual(read);
      }
    });

    // Two transactions at once: PostgreSQL's (PGlite is one session).
    if (store === "postgres") {
      test("ASaveWaitingOnAnotherRefusesTheRunItMovedOn: a run saved and committed while a save of 2 runs or of 20 waited for its row fails the save; rolled back, the save goes through", async () => {
        const db = opened.database.db;
        const ids = Array.from({ length: 20 }, (_, i) => 20 + i);
        await db.transaction((tx) => Promise.all(ids.map((i) => insertExecution(tx, run(i)))));
        const waiting = async () => (await runStatement(db, "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'", []))[0]!.n;
        const undone = new Error("rolled back");
        /** saveRuns of count runs as read now, issued while another transaction that saved the first waits, then commits or rolls back. */
        const saveWhileSaved = async (count: number, end: "commit" | "rollback") => {
          const read = await Promise.all(ids.slice(0, count).map(rowOf));
          let saving!: Promise<unknown>;
          await db.transaction(async (tx) => {
            await saveRuns(tx, [{ prev: read[0]!, next: { nextEventId: 50 } }]);
            saving = db.transaction((other) => saveRuns(other, read.map((prev) => ({ prev, next: { nextEventId: 60 } }))));
            saving.catch(() => {});
            await eventually(async () => expect(await waiting()).toBe(1));
            if (end === "rollback") throw undone;
          }).catch((e) => {
            if (e !== undone) throw e;
          });
          return { read, saving };
        };

        // 2 runs and 20 (padded to 32): two texts of the statement.
        for (const count of [2, 20]) {
          const committed = await saveWhileSaved(count, "commit");
          await expect(committed.saving).rejects.toThrow(`one or more of ${count} executions changed since they were read`);
          const [first, ...rest] = committed.read;
          expect(await Promise.all(ids.slice(0, count).map(rowOf))).toEqual([{ ...first!, nextEventId: 50, dbVersion: first!.dbVersion + 1 }, ...rest]);

          const rolledBack = await saveWhileSaved(count, "rollback");
          await rolledBack.saving;
          expect(await Promise.all(ids.slice(0, count).map(rowOf))).toEqual(rolledBack.read.map((r) => ({ ...r, nextEventId: 60, dbVersion: r.dbVersion + 1 })));
        }
      });
    }

    const applier = createHistoryApplier({
      cluster: { clusterName: "b", historyShardCount: 1 } as CurrentCluster, namespaces: {} as NamespaceRegistry, writer: {} as never, log: createLogger({ level: "error" }),
    });
    const ns = { id: NS } as NamespaceRecord;
    const signal = (i: number) => eventFromRow({
      eventId: 2, version: 1, eventTime: new Date(Date.UTC(2026, 0, 1, 1)),
      attributes: { workflowExecutionSignaledEventAttributes: { signalName: "s", requestId: `req-${i}`, identity: "" } },
    });
    const signalTask = (i: number) => ({
      namespaceId: NS, workflowId: `wf-${i}`, runId: `run-${i}`, firstEventId: 2, nextEventId: 3, versionHistory: [{ eventId: 2, version: 1 }], events: [signal(i)],
    });

    const started = (i: string, executionTimeoutMs = 0) => eventFromRow({
      eventId: 1, version: 1, eventTime: new Date(Date.UTC(2026, 0, 1, 2)),
      attributes: { workflowExecutionStartedEventAttributes: { workflowType: "T", taskQueue: "q", requestId: `start-${i}`, identity: "", executionTimeoutMs: String(executionTimeoutMs) } },
    });
    const startTask = (workflowId: string, runId: string, executionTimeoutMs = 0) => ({
      namespaceId: NS, workflowId, runId, firstEventId: 1, nextEventId: 2, versionHistory: [{ eventId: 1, version: 1 }], events: [started(runId, executionTimeoutMs)],
    });

    test("APageOfNewRunsReadsTheirWorkflowsTogether: 1,100 starts find their workflows' current runs in statements of 1,024, not one each", async () => {
      // wf-1's open run-1 rivals a new run of it; wf-closed's current run is the one started last.
      await opened.database.db.transaction((tx) => Promise.all([
        insertExecution(tx, { ...run(9000), workflowId: "wf-closed", runId: "old", status: "COMPLETED", startTime: new Date(Date.UTC(2026, 0, 1)) }),
        insertExecution(tx, { ...run(9001), workflowId: "wf-closed", runId: "new", status: "COMPLETED", startTime: new Date(Date.UTC(2026, 0, 2)) }),
      ]));
      const fresh = Array.from({ length: 1097 }, (_, i) => startTask(`wf-start-${i}`, `run-start-${i}`));
      const tasks = [startTask("wf-1", "run-1b"), startTask("wf-closed", "next"), startTask("wf-1", "run-1"), ...fresh];
      const { texts, reads } = await opened.database.db.transaction(async (tx) => {
        const c = counting(tx);
        const reads = await applier.readForApply(c.tx, tasks.map((task) => ({ ns, task })));
        return { texts: c.texts, reads };
      });
      // The key locks in one statement; the runs' rows and the workflows' current runs in two each.
      expect(texts).toHaveLength(5);
      expect([reads[0]!.run, reads[0]!.current]).toEqual([undefined, await rowOf(1)]);
      expect(applier.planApply(ns, tasks[0]!, reads[0]!)).toBeUndefined();
      expect([reads[1]!.run, reads[1]!.current?.runId]).toEqual([undefined, "new"]);
      expect(applier.planApply(ns, tasks[1]!, reads[1]!)?.events).toBe(1);
      expect([reads[2]!.run, reads[2]!.current]).toEqual([await rowOf(1), await rowOf(1)]);
      expect(reads.slice(3).every((r) => r.run === undefined && r.current === undefined)).toBe(true);
    });

    /** The texts of the statements writeAll issues for tasks' applies (read first, outside the count). */
    const statementsOfWriteAll = (tasks: Parameters<typeof applier.planApply>[1][]) =>
      opened.database.db.transaction(async (tx) => {
        const reads = await applier.readForApply(tx, tasks.map((task) => ({ ns, task })));
        const c = counting(tx);
        await applier.writeAll(c.tx, tasks.map((t, i) => applier.planApply(ns, t, reads[i]!)!.write!));
        return c.texts;
      });

    test("APageOfNewRunsWritesTheirRowsTogether: 1,100 starts insert their runs, events and request ids in statements of 1,024, not a run each", async () => {
      const tasks = Array.from({ length: 1100 }, (_, i) => startTask(`wf-new-${i}`, `run-new-${i}`));
      const texts = await statementsOfWriteAll(tasks);
      expect(texts).toHaveLength(6);
      const rows = await opened.database.db.select().from(executions).where(eq(executions.namespaceId, NS));
      const made = rows.filter((r) => r.workflowId.startsWith("wf-new-"));
      expect(made).toHaveLength(1100);
      expect(made.find((r) => r.runId === "run-new-7")).toMatchObject({
        workflowId: "wf-new-7", workflowType: "T", taskQueue: "q", status: "RUNNING", closeTime: null, cancelRequested: false, executionTimeoutMs: 0,
        nextEventId: 2, lastWriteVersion: 1, versionHistory: [{ eventId: 1, version: 1 }], dbVersion: 1, startTime: new Date(Date.UTC(2026, 0, 1, 2)),
      });
      const ids = await opened.database.db.select().from(requestIds).where(eq(requestIds.requestId, "start-run-new-7"));
      expect(ids.map((r) => [r.runId, r.eventId])).toEqual([["run-new-7", 1]]);
    });

    const timedStart = (i: number) => startTask(`wf-timed-${i}`, `run-timed-${i}`, 3_600_000 + i);
    const timerStatements = (texts: string[]) => texts.filter((t) => t.includes(`"timer_tasks"`));

    test("APageOfNewRunsWritesTheirTimersTogether: 1,100 starts with a timeout insert their timers in statements of 1,024, not one each", async () => {
      const tasks = Array.from({ length: 1100 }, (_, i) => timedStart(i));
      const texts = await statementsOfWriteAll(tasks);
      // Rows, events and request ids as without timers, and the timers in two statements.
      expect(timerStatements(texts)).toHaveLength(2);
      expect(texts).toHaveLength(8);
      const timers = await opened.database.db.select().from(timerTasks).where(like(timerTasks.workflowId, "wf-timed-%"));
      const start = Date.UTC(2026, 0, 1, 2);
      expect(timers.map((t) => [t.workflowId, t.runId, t.kind, t.fireAt.getTime(), t.version, t.shardId]).sort()).toEqual(
        tasks.map((_, i) => [`wf-timed-${i}`, `run-timed-${i}`, "WORKFLOW_TIMEOUT", start + 3_600_000 + i, 1, 1]).sort(),
      );
      expect(new Set(timers.map((t) => t.id)).size).toBe(1100);
    });

    test("APageOfClosingRunsClearsTheirTimersTogether: 1,100 runs that complete delete their timers in statements of 1,024, and only theirs", async () => {
      const closing = Array.from({ length: 1100 }, (_, i) => 3000 + i);
      const timer = (i: number, n: number) => ({
        id: `timer-${i}-${n}`, shardId: 1, fireAt: new Date(Date.UTC(2026, 0, 2)), kind: "WORKFLOW_TIMEOUT", namespaceId: NS, workflowId: `wf-${i}`, runId: `run-${i}`, version: 1,
      });
      // Two timers per closing run; wf-5000 stays open, and another run of wf-3000 keeps its own.
      await opened.database.db.transaction(async (tx) => {
        await Promise.all([...closing, 5000].map((i) => insertExecution(tx, run(i))));
        await tx.insert(timerTasks).values([...closing.flatMap((i) => [timer(i, 0), timer(i, 1)]), timer(5000, 0), { ...timer(3000, 9), runId: "run-other" }]);
      });
      const completed = (i: number) => ({
        ...signalTask(i),
        events: [eventFromRow({ eventId: 2, version: 1, eventTime: new Date(Date.UTC(2026, 0, 1, 3)), attributes: { workflowExecutionCompletedEventAttributes: {} } })],
      });
      const tasks = closing.map(completed);
      const texts = await statementsOfWriteAll(tasks);
      // The states and events in two statements each (no request ids), the timers' deletes in two.
      expect(timerStatements(texts)).toHaveLength(2);
      expect(texts).toHaveLength(6);
      const left = await opened.database.db.select().from(timerTasks).where(eq(timerTasks.namespaceId, NS));
      expect(left.filter((t) => /^timer-(3|4|5)/.test(t.id)).map((t) => t.id).sort()).toEqual(["timer-3000-9", "timer-5000-0"]);
      expect((await rowOf(3000)).status).toBe("COMPLETED");
    });

    test("APageOfRunsWritesInThreeStatements: signals to four runs apply as the runs' states, events and request ids", async () => {
      await opened.database.db.transaction((tx) => Promise.all([5, 6, 7, 8].map((i) => insertExecution(tx, run(i)))));
      const tasks = [5, 6, 7, 8].map(signalTask);
      await opened.database.db.transaction(async (tx) => {
        const reads = await applier.readForApply(tx, tasks.map((task) => ({ ns, task })));
        const plans = tasks.map((t, i) => applier.planApply(ns, t, reads[i]!)!);
        expect(plans.map((p) => p.events)).toEqual([1, 1, 1, 1]);
        const c = counting(tx);
        await applier.writeAll(c.tx, plans.map((p) => p.write!));
        expect(c.statements()).toBe(3);
      });
      for (const i of [5, 6, 7, 8]) {
        const r = await rowOf(i);
        expect([r.nextEventId, r.dbVersion, r.versionHistory]).toEqual([3, 2, [{ eventId: 2, version: 1 }]]);
        const events = await opened.database.db.select().from(historyEvents).where(eq(historyEvents.workflowId, `wf-${i}`));
        expect(events.map((e) => [e.eventId, e.eventType, e.runId])).toEqual([[2, "WORKFLOW_EXECUTION_SIGNALED", `run-${i}`]]);
        const ids = await opened.database.db.select().from(requestIds).where(eq(requestIds.workflowId, `wf-${i}`));
        expect(ids.map((r) => [r.requestId, r.eventId, r.runId])).toEqual([[`req-${i}`, 2, `run-${i}`]]);
      }
    });

    test("APageOfMoreThan1024Runs: 1,100 signals read, save and write in statements of at most 1,024 rows", async () => {
      const many = Array.from({ length: 1100 }, (_, i) => 1000 + i);
      await opened.database.db.transaction((tx) => Promise.all(many.map((i) => insertExecution(tx, run(i)))));
      const texts = await opened.database.db.transaction(async (tx) => {
        const c = counting(tx);
        const tasks = many.map(signalTask);
        const reads = await applier.readForApply(c.tx, tasks.map((task) => ({ ns, task })));
        expect(reads.every((r) => r.run !== undefined)).toBe(true);
        await applier.writeAll(c.tx, tasks.map((t, i) => applier.planApply(ns, t, reads[i]!)!.write!));
        return c.texts;
      });
      // The key locks in one statement; the rows, the states, the events and the request ids in two each.
      expect(texts).toHaveLength(9);
      const rows = await opened.database.db.select().from(executions).where(eq(executions.namespaceId, NS));
      expect(rows.filter((r) => many.includes(Number(r.workflowId.slice(3)))).map((r) => [r.nextEventId, r.dbVersion])).toEqual(many.map(() => [3, 2]));
      const events = await opened.database.db.select().from(historyEvents).where(eq(historyEvents.eventId, 2));
      expect(events.filter((e) => many.includes(Number(e.workflowId.slice(3))))).toHaveLength(1100);
    });

    test("APageIsWrittenForAPowerOfTwoRuns: pages of three runs and of four issue the same statement texts, and the padding writes nothing", async () => {
      const all = [11, 12, 13, 14, 15, 16, 17];
      await opened.database.db.transaction((tx) => Promise.all(all.map((i) => insertExecution(tx, run(i)))));
      const applyPage = (runs: number[]) => opened.database.db.transaction(async (tx) => {
        const c = counting(tx);
        const tasks = runs.map(signalTask);
        const reads = await applier.readForApply(c.tx, tasks.map((task) => ({ ns, task })));
        await applier.writeAll(c.tx, tasks.map((t, i) => applier.planApply(ns, t, reads[i]!)!.write!));
        return c.texts;
      });
      const three = await applyPage([11, 12, 13]);
      const four = await applyPage([14, 15, 16, 17]);
      expect(three).toHaveLength(5);
      expect(four).toEqual(three);
      for (const i of all) expect((await rowOf(i)).nextEventId).toBe(3);
      const events = await opened.database.db.select().from(historyEvents).where(eq(historyEvents.namespaceId, NS));
      const ids = await opened.database.db.select().from(requestIds).where(eq(requestIds.namespaceId, NS));
      expect(events.filter((e) => all.includes(Number(e.workflowId.slice(3)))).map((e) => e.workflowId).sort()).toEqual(all.map((i) => `wf-${i}`).sort());
      expect(ids.filter((r) => all.includes(Number(r.workflowId.slice(3)))).map((r) => r.requestId).sort()).toEqual(all.map((i) => `req-${i}`).sort());
    });

    let many: Promise<unknown> | undefined;
    /** 20,000 runs of a namespace of their own, made once by one statement, then statistics as autovacuum keeps them. */
    const manyRuns = () => (many ??= (async () => {
      await opened.database.db.execute(sql.raw(
        `insert into executions (namespace_id, workflow_id, run_id, shard_id, workflow_type, task_queue, status, start_time, next_event_id, last_write_version, version_history) ` +
        `select 'ns-many', 'wf-' || i, 'run-' || i, 1, 'T', 'q', 'RUNNING', now(), 2, 1, '[{"eventId": 1, "version": 1}]' from generate_series(1, 20000) as i`));
      await opened.database.db.execute(sql.raw("analyze executions"));
    })());

    test("LockingAPageOfRunsReadsOnlyTheirRows: 1,024 runs among 20,000 are found through the primary key, in the plan kept for any keys too", async () => {
      await manyRuns();
      const keys = Array.from({ length: 1024 }, (_, i) => ({ namespaceId: "ns-many", workflowId: `wf-${i * 19 + 1}`, runId: `run-${i * 19 + 1}` }));
      await opened.database.db.transaction(async (tx) => {
        const c = counting(tx);
        const found = await lockRuns(c.tx, keys);
        expect(found.size).toBe(1024);
        expect(c.statements()).toBe(1);
        // A semi join on the keys read all 20,000 (a Seq Scan): 1,024 lookups cost the planner more, up to some 150,000 runs.
        for (const mode of ["force_custom_plan", "force_generic_plan"] as const) {
          expect(await executionsScans(tx, c.texts[0]!, c.params[0]!, mode)).toEqual(["Index Scan executions_namespace_id_workflow_id_run_id_pk"]);
        }
      });
    });

    test("SavingAPageOfRunsReadsOnlyTheirRows: 1,000 runs among 20,000 are saved by the rows their keys find through the primary key, in the plan kept for any keys too", async () => {
      await manyRuns();
      const keys = Array.from({ length: 1000 }, (_, i) => ({ namespaceId: "ns-many", workflowId: `wf-${i * 17 + 3}`, runId: `run-${i * 17 + 3}` }));
      const prev = await opened.database.db.transaction((tx) => lockRuns(tx, keys));
      const next = (r: ExecutionRow) => ({ nextEventId: r.nextEventId + 1, versionHistory: [...r.versionHistory, { eventId: r.nextEventId, version: 1 }] });
      await opened.database.db.transaction(async (tx) => {
        const c = counting(tx);
        await saveRuns(c.tx, [...prev.values()].map((r) => ({ prev: r, next: next(r) })));
        expect(c.statements()).toBe(1);
        // A join of executions on the saves, planned on their number, read all 20,000 (a Seq Scan), as lockRuns' semi join did.
        for (const mode of ["force_custom_plan", "force_generic_plan"] as const) {
          expect(await executionsScans(tx, c.texts[0]!, c.params[0]!, mode)).toEqual(["ModifyTable", "Index Scan executions_namespace_id_workflow_id_run_id_pk"]);
        }
      });
      const saved = await opened.database.db.transaction((tx) => lockRuns(tx, keys));
      expect([...saved.values()]).toEqual([...prev.values()].map((r) => ({ ...r, ...next(r), dbVersion: r.dbVersion + 1 })));
    });
  });
}
