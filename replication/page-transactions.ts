import type { RemoteClients } from "../src/cluster/remote-client";
import type { ReplicationTask } from "../src/gen/tern/admin/v1/service_pb";
import { runKeyText } from "../src/history/branch-store";
import { lockRunKeys, lockRunKeysPart } from "../src/history/run-batches";
import type { Writer } from "../src/history/writer";
import type { Logger } from "../src/observability/log";
import type { Metrics } from "../src/observability/metrics";
import { holdNamespaces } from "../src/history/namespace-guard";
import type { NamespaceRecord } from "../src/namespace/registry";
import type { Tx } from "../src/persistence/database";
import { composite, runStatement } from "../src/persistence/raw-statements";
import { advanceInboundAck, advanceInboundAckPart } from "./ack-levels";
import { RetryableReplicationError, type HistoryApplier, type IncomingTask, type PlannedApply, type RawHistoryFetcher } from "./applier";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import { HELD_BEHIND, noneHeldPart, type HeldRuns, type ReplicationDlq } from "./dlq";
import { fetchOutside, lacksRawHistory } from "./gap-fetch";
import type { RemoteCluster } from "./manager";
import { createRunCache } from "./run-cache";
import { mergeRunTasks } from "./task-merge";
import { versionHistoryFromProto, versionHistoryToProto } from "./version-history";

/** What the page transactions need. */
export interface PageTransactionsDeps {
  applier: HistoryApplier;
  /** Transactions with retries and persistence metrics. */
  writer: Pick<Writer, "transact" | "transactPipelined" | "transactOneStatement">;
  metrics: Metrics;
  log: Logger;
  /** Held runs: their tasks go to the DLQ too. */
  dlq: ReplicationDlq;
}

/** What an apply did: runs that grew, and tasks that went to the DLQ (not applied). */
export interface Applied {
  grown: string[];
  held: ReplicationTask[];
}

/** Where an apply moves one shard's inbound ack. */
export type AckMove = Parameters<typeof advanceInboundAck>[3] & { shardId: number };

/** heldRuns's answer for no tasks. */
const NONE_HELD: HeldRuns = { runs: new Set(), any: false };

/** Thrown inside applyPipelined when the page needs applyInFull: rolls the attempt back. */
class NeedsFullApply extends Error {}

/** Awaits every promise (none is left running), then throws the first failure. */
export async function settleAll(all: Promise<unknown>[]): Promise<void> {
  const failed = (await Promise.allSettled(all)).find((r) => r.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
}

/** Per workflow in task order, merged per run (a page interleaves runs); undefined when a run is left twice (it switched branches). */
function mergedRuns(tasks: ReplicationTask[]): IncomingTask[] | undefined {
  const merged = byWorkflow(tasks).flatMap((g) => mergeRunTasks(g.map(incoming)));
  return new Set(merged.map(runKeyText)).size === merged.length ? merged : undefined;
}

/** fn's result, or undefined if it throws. */
function attempt<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch {
    return undefined;
  }
}

/** What applying merged by plans (one each, in order) did: the runs that got events. */
function appliedOf(merged: IncomingTask[], plans: PlannedApply[]): Applied {
  return { grown: merged.filter((_, i) => plans[i]!.events > 0).map((t) => t.runId), held: [] };
}

/** Tasks grouped by workflow, each group in task order. */
function byWorkflow(tasks: ReplicationTask[]): ReplicationTask[][] {
  const groups = new Map<string, ReplicationTask[]>();
  for (const t of tasks) {
    const k = `${t.namespaceId}/${t.workflowId}`;
    const g = groups.get(k);
    if (g) g.push(t);
    else groups.set(k, [t]);
  }
  return [...groups.values()];
}

/**
 * The transactions that apply pulled pages (page-applier.ts decides which tasks go
 * together and what happens when one fails): in one round trip from the rows this process
 * left, in two from fresh reads, or in full.
 */
export function createPageTransactions(deps: PageTransactionsDeps) {
  const { applier, writer, metrics, log, dlq } = deps;
  const runs = createRunCache();
  /** Remote shards ("remote/shard") whose last read found no DLQ entry and whose last one-trip apply held: applyOneTrip may try them. */
  const oneTripShards = new Set<string>();
  const shardText = (remote: RemoteCluster, shardId: number) => `${remote.name}/${shardId}`;
  /**
   * The barrier of the tasks' namespaces, taken first (before any row lock, as a delete takes them):
   * a delete of one here waited for the apply and took its runs, or came before and the apply
   * writes nothing. Before, a run applied while its namespace was deleted here committed after the
   * delete, of no namespace. Two statements per transaction, not per task, sent with the others.
   */
  const holdAll = (tx: Tx, namespaces: Map<string, NamespaceRecord>) =>
    namespaces.size ? holdNamespaces(tx, namespaces.keys(), () => new RetryableReplicationError("a namespace of the tasks was deleted here meanwhile; retrying")) : Promise.resolve();

  /**
   * Applies tasks (of remote's shards that moves name) and makes the moves in one
   * transaction; returns the runs that grew. Tried in one round trip first (applyOneTrip),
   * then in two (applyPipelined), else in full (applyInFull).
   */
  async function applyAll(remote: RemoteCluster, signal: AbortSignal, tasks: ReplicationTask[], moves: AckMove[]): Promise<Applied> {
    const namespaces = await applier.namespacesOf(tasks);
    const labels = { remote_cluster: remote.name };
    // A run left twice in the pages (it switched branches) takes the full path.
    const merged = mergedRuns(tasks);
    for (const [path, apply] of merged ? ([["one-trip", applyOneTrip], ["pipelined", applyPipelined]] as const) : []) {
      // A stream that stopped while a path failed tries no other: the server is stopping.
      signal.throwIfAborted();
      const done = await apply(remote, merged!, namespaces, moves, signal);
      if (!done) continue;
      metrics.inc("replication_pages_applied", { ...labels, path });
      return done;
    }
    signal.throwIfAborted();
    metrics.inc("replication_pages_applied", { ...labels, path: "full" });
    // Conflicts, rivals and gaps change runs in ways the cache does not follow.
    runs.forget(tasks);
    return applyInFull(remote, signal, tasks, namespaces, moves);
  }

  /**
   * Pages of runs this process applied lately, in one round trip: planned from their rows as
   * its commits left them (the run cache), and sent whole with the acks' moves and the
   * guards: as one statement, a transaction of its own, when the pages only append to runs
   * (applier.writeParts), else between BEGIN and COMMIT. A guard rolls it back, and the pages
   * are applied from fresh reads, when a run's row moved on (db_version), a new run's row
   * exists or rivals an open run (the insert's unique indexes), a shard has DLQ entries or an
   * ack moved. Undefined then, and when a run's row is not cached (or the last try for one of
   * the shards failed). merged: the pages' tasks merged per run.
   */
  async function applyOneTrip(remote: RemoteCluster, merged: IncomingTask[], namespaces: Map<string, NamespaceRecord>, moves: AckMove[], signal: AbortSignal): Promise<Applied | undefined> {
    if (!moves.every((m) => oneTripShards.has(shardText(remote, m.shardId)))) return undefined;
    const plans: PlannedApply[] = [];
    for (const t of merged) {
      const run = runs.get(t);
      // A task whose events do not follow the cached row throws here: it is read afresh.
      const plan = run || t.firstEventId === 1 ? attempt(() => applier.planApply(namespaces.get(t.namespaceId)!, t, { run })) : undefined;
      // A duplicate by the cached row writes nothing, so no db_version guard would notice a
      // commit the cache remembers but the database lost (a crash before an asynchronous
      // commit was flushed; the source sends its tasks again): read afresh.
      if (!plan || (run && !plan.write)) return undefined;
      plans.push(plan);
    }
    const writes = plans.flatMap((p) => (p.write ? [p.write] : []));
    const shardIds = moves.map((m) => m.shardId);
    try {
      const checkParts = [...moves.map((m, i) => advanceInboundAckPart(remote.name, m.shardId, m, `ack_${i}`)), noneHeldPart(remote.name, shardIds)];
      const parts = applier.writeParts(writes);
      const locks = parts && lockRunKeysPart(merged);
      if (parts && locks) {
        // One statement, a transaction of its own (PostgreSQL answers each statement on its
        // own): the acks' moves and the DLQ check, then the runs' key locks (which order
        // appliers' writes of a run), then the writes (applier.writeParts), in the order of
        // the pipelined path's statements. No namespace barrier (holdAll): these only save runs
        // that exist, and a delete taking one meanwhile fails saveRunsPart's db_version guard.
        const { text, params } = composite([...checkParts, locks, ...parts]);
        await writer.transactOneStatement("ReplicateHistory", (tx) => runStatement(tx, text, params), signal);
      } else {
        // Three statements between BEGIN and COMMIT: the checks, the key locks, the writes.
        const checks = composite(checkParts);
        await writer.transactPipelined("ReplicateHistory", async (tx, commit) => {
          const all = [holdAll(tx, namespaces), runStatement(tx, checks.text, checks.params), lockRunKeys(tx, merged), applier.writeAll(tx, writes)];
          commit();
          await settleAll(all);
        }, signal);
      }
    } catch {
      // The shards' next pages read first (and find out whether one trip may work again).
      for (const id of shardIds) oneTripShards.delete(shardText(remote, id));
      runs.forget(merged);
      return undefined;
    }
    runs.committed(writes);
    return appliedOf(merged, plans);
  }

  /**
   * The usual page in two round trips (see pipelined-tx.ts): BEGIN goes out with the ack's
   * move, which of the page's runs are held (their DLQ entries locked: dlq.ts heldRuns) and
   * every run's locks and reads; COMMIT right behind the writes, planned in between. Undefined, rolled back before any write, when the page needs
   * applyInFull: a held run, a divergence, a gap or a rival run. merged: as for applyOneTrip.
   */
  async function applyPipelined(remote: RemoteCluster, merged: IncomingTask[], namespaces: Map<string, NamespaceRecord>, moves: AckMove[], signal: AbortSignal): Promise<Applied | undefined> {
    try {
      const { done, writes, held } = await writer.transactPipelined("ReplicateHistory", async (tx, commit) => {
        const barrier = holdAll(tx, namespaces);
        // The acks first: each moves only from where its page starts (another process may apply
        // the shard), and must fail before COMMIT goes out, not after.
        const acked = Promise.all(moves.map((m) => advanceInboundAck(tx, remote.name, m.shardId, m)));
        const held = merged.length ? dlq.heldRuns(tx, remote.name, moves.map((m) => m.shardId), merged) : NONE_HELD;
        const reads = applier.readForApply(tx, merged.map((task) => ({ ns: namespaces.get(task.namespaceId)!, task })));
        const [heldRuns, found] = await Promise.all([held, reads, acked, barrier]);
        if (heldRuns.runs.size) throw new NeedsFullApply();
        const planned = merged.map((t, i) => applier.planApply(namespaces.get(t.namespaceId)!, t, found[i]!));
        if (planned.some((p) => !p)) throw new NeedsFullApply();
        const plans = planned as PlannedApply[];
        const writes = plans.flatMap((p) => (p.write ? [p.write] : []));
        const written = applier.writeAll(tx, writes);
        commit();
        await written;
        return { done: appliedOf(merged, plans), writes, held: heldRuns.any };
      }, signal);
      runs.committed(writes);
      if (!held) for (const m of moves) oneTripShards.add(shardText(remote, m.shardId));
      return done;
    } catch (e) {
      if (e instanceof NeedsFullApply) return undefined;
      throw e;
    }
  }

  /**
   * Applies tasks in an ordinary transaction: tasks of a run that already has a DLQ entry
   * from this shard go to the DLQ too, so the run never gets a gap (the merge re-applies
   * them in order); conflicts are resolved and gaps fetched from the source (outside the
   * transaction: fetchOutside, all the gaps an attempt finds in one round). Workflows apply side
   * by side, their statements pipelined on the transaction's connection; a workflow's tasks in order.
   */
  async function applyInFull(
    remote: RemoteCluster,
    signal: AbortSignal,
    tasks: ReplicationTask[],
    namespaces: Map<string, NamespaceRecord>,
    moves: AckMove[],
  ): Promise<Applied> {
    return fetchOutside(rawFetcher(remote.name, remote.clients, log, signal), (fetchRaw) =>
      writer.transact("ReplicateHistory", async (tx) => {
        await holdAll(tx, namespaces);
        const held = (tasks.length ? await dlq.heldRuns(tx, remote.name, moves.map((m) => m.shardId), tasks) : NONE_HELD).runs;
        const done: Applied = { grown: [], held: [] };
        let failed = false;
        const apply = async (workflowTasks: ReplicationTask[]) => {
          try {
            for (const t of workflowTasks.filter((t) => held.has(runKeyText(t)))) {
              if (failed) return; // the transaction rolls back: issue nothing more on it
              await dlq.add(tx, remote.name, t, 0, HELD_BEHIND);
              done.held.push(t);
            }
            // Held runs are held whole, so the others apply apart from them, in order, merged per run.
            await applyRuns(mergeRunTasks(workflowTasks.filter((t) => !held.has(runKeyText(t))).map(incoming)));
          } catch (e) {
            // A range a run lacks rolls the transaction back too, but only once the other workflows
            // have found theirs: fetchOutside fetches them all in one round.
            if (!lacksRawHistory(e)) failed = true;
            throw e;
          }
        };
        /**
         * A workflow's tasks in order. Past a range one lacks the rest still apply (their writes roll
         * back with the attempt) so that the attempt finds the ranges they lack too.
         */
        const applyRuns = async (merged: IncomingTask[]) => {
          let lacking: unknown;
          for (const t of merged) {
            if (failed) return;
            try {
              if ((await applier.applyTask(tx, namespaces.get(t.namespaceId)!, t, fetchRaw)) > 0) done.grown.push(t.runId);
            } catch (e) {
              // After a lacking range the run is short of events: a later task's other failure says nothing.
              if (!lacksRawHistory(e)) throw lacking ?? e;
              lacking ??= e;
            }
          }
          if (lacking) throw lacking;
        };
        // Pipelined: the acks move with the apply, and a failure of any rolls back all.
        // Everything settles before the callback returns: no statement may reach the
        // connection after the rollback, when it serves another transaction.
        await settleAll([...byWorkflow(tasks).map(apply), ...moves.map((m) => advanceInboundAck(tx, remote.name, m.shardId, m))]);
        return done;
      }, signal),
    );
  }

  return { applyAll };
}

/**
 * Most bytes of events one GetWorkflowExecutionRawHistory answer brings to this cluster's gap
 * repairs and backfills (a source caps it there too, HISTORY_PAGE_BYTES): a source from
 * before the cap sends the whole range at once.
 */
export const RAW_HISTORY_PAGE_BYTES = 4 << 20;

/** Gap repair (and DLQ merge) through the source's GetWorkflowExecutionRawHistory, a page at a time. */
export function rawFetcher(source: string, clients: RemoteClients, log: Logger, signal?: AbortSignal): RawHistoryFetcher {
  return async (task, first, next) => {
    log.info("repairing history gap from source", { remote: source, workflowId: task.workflowId, runId: task.runId, first, next });
    const events: HistoryEvent[] = [];
    while (first + events.length < next) {
      const from = first + events.length;
      const res = await clients.admin.getWorkflowExecutionRawHistory(
        {
          namespaceId: task.namespaceId, workflowId: task.workflowId, runId: task.runId, firstEventId: BigInt(from), nextEventId: BigInt(next),
          // The task's branch, which need not be the source's current one any more.
          versionHistory: versionHistoryToProto(task.versionHistory),
          maximumPageBytes: BigInt(RAW_HISTORY_PAGE_BYTES),
        },
        { signal, timeoutMs: 30_000 },
      );
      if (!res.events.length || res.events.length > next - from || Number(res.events[0]?.eventId) !== from) {
        throw new Error(`source ${source} returned ${res.events.length} events for ${task.workflowId} run ${task.runId} [${from}, ${next})`);
      }
      events.push(...res.events);
    }
    return events;
  };
}

/** The applier's form of a task. */
export function incoming(t: ReplicationTask): IncomingTask {
  return {
    namespaceId: t.namespaceId,
    workflowId: t.workflowId,
    runId: t.runId,
    firstEventId: Number(t.firstEventId),
    nextEventId: Number(t.nextEventId),
    versionHistory: versionHistoryFromProto(t.versionHistory?.items),
    events: t.events,
  };
}
