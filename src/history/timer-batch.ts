import type { NamespaceRecord } from "../namespace/registry";
import type { Tx } from "../persistence/database";
import { runStatement, tableCodec } from "../persistence/raw-statements";
import { timerTasks } from "../persistence/schema";
import { runKeyText } from "./branch-store";
import { deleteRunsTimers, eventRows, insertRunsEventRows, type ExecutionRow, type NewEvent } from "./execution-store";
import { lockRuns, saveRuns } from "./run-batches";
import type { Writer } from "./writer";

/** A timer task as the queue reads it. */
export type TimerTask = typeof timerTasks.$inferSelect;

/** The event a run's execution timeout closes it with. */
export const timedOutEvent = (run: ExecutionRow): NewEvent => ({
  attributes: { case: "workflowExecutionTimedOutEventAttributes", value: { executionTimeoutMs: BigInt(run.executionTimeoutMs) } as never },
});

/**
 * Fires timers of ns, each of a distinct run, in one transaction: on PostgreSQL two round trips
 * for them all, where a fire each took five. The locks are a fire's, in its order: the
 * namespace's barrier (shared, checked as a write checks it), the runs' rows (in key order, as
 * lockRuns takes them), the timers' rows; then the writes of the runs it closes, their
 * replication tasks last (a statement per shard, in shard order: two batches take the shard
 * rows in one order). A timer gone by then (another process fired it, its run closed) does
 * nothing; one whose run is gone or closed is deleted. Any failure fails every fire of the batch (the caller fires them one
 * by one then): a run that holds a newer cluster's events (writer.appended), the namespace
 * moved on (NamespaceChanged). Resolves to the timers whose fire closed their run.
 */
export function fireTimerBatch(writer: Writer, ns: NamespaceRecord, tasks: TimerTask[], signal?: AbortSignal): Promise<TimerTask[]> {
  if (new Set(tasks.map(runKeyText)).size !== tasks.length) throw new Error("fireTimerBatch: two timers of one run");
  return writer.transactPipelined("FireTimer", async (tx, commit) => {
    const [, runs, present] = await Promise.all([writer.guard(tx, ns), lockRuns(tx, tasks), lockTimers(tx, tasks.map((t) => t.id))]);
    const firing = tasks.filter((t) => present.has(t.id));
    const closing = firing.flatMap((task) => {
      const run = runs.get(runKeyText(task));
      return run && run.status === "RUNNING" ? [{ task, run }] : [];
    });
    // Planned before any write is issued: a refusal of one run's rolls the batch back unsent.
    const writes = closing.map(({ run }) => {
      const events = [timedOutEvent(run)];
      const key = { namespaceId: run.namespaceId, workflowId: run.workflowId, runId: run.runId, shardId: run.shardId };
      return { key, run, events, ...writer.appended(ns, run, { status: "TIMED_OUT", events }) };
    });
    const written = [
      deleteTimersById(tx, firing.map((t) => t.id)),
      saveRuns(tx, writes.map((w) => ({ prev: w.run, next: w.state }))),
      insertRunsEventRows(tx, writes.flatMap((w) => eventRows(w.first, ns.failoverVersion, w.time, w.events).map((e) => ({ ...e, key: w.key })))),
      deleteRunsTimers(tx, writes.map((w) => w.key)),
      writer.outboxEach(tx, ns, writes),
    ];
    commit();
    await Promise.all(written);
    return closing.map((c) => c.task);
  }, signal);
}

const t = tableCodec(timerTasks);
const IDS = `${t.name("id")} = any(array(select jsonb_array_elements_text($1::jsonb)))`;
const LOCK_TIMERS_TEXT = `select ${t.name("id")} as id from ${t.table} where ${IDS} order by ${t.name("id")} for update`;
const DELETE_TIMERS_TEXT = `delete from ${t.table} where ${IDS}`;

/** Locks the timers of ids that are still there, in id order; resolves to their ids. */
function lockTimers(tx: Tx, ids: string[]): Promise<Set<string>> {
  return runStatement(tx, LOCK_TIMERS_TEXT, [JSON.stringify(ids)]).then((rows) => new Set(rows.map((r) => r.id as string)));
}

/** Deletes the timers of ids; issued at once (pipelined transactions). */
function deleteTimersById(tx: Tx, ids: string[]): Promise<unknown> {
  return ids.length ? runStatement(tx, DELETE_TIMERS_TEXT, [JSON.stringify(ids)]) : Promise.resolve();
}
