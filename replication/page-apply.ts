import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { RemoteClients } from "../src/cluster/remote-client";
import type { ReplicationTask } from "../src/gen/tern/admin/v1/service_pb";
import { lockRunKeys } from "../src/history/run-batches";
import type { Writer } from "../src/history/writer";
import type { Logger } from "../src/observability/log";
import type { Metrics } from "../src/observability/metrics";
import type { NamespaceRecord } from "../src/namespace/registry";
import { advanceInboundAck } from "./ack-levels";
import type { HistoryApplier, IncomingTask, PlannedApply, RawHistoryFetcher } from "./applier";
import { HELD_BEHIND, runKey, type ReplicationDlq } from "./dlq";
import type { RemoteCluster } from "./manager";
import { createRunCache } from "./run-cache";
import { mergeRunTasks } from "./task-merge";
import { versionHistoryFromProto, versionHistoryToProto } from "./version-history";

/** What an apply did: runs that grew, and tasks that went to the DLQ. */
export interface Applied {
  grown: string[];
  held: number;
}

/** The pulled page a batch of tasks comes from. */
export interface PageOf {
  remote: RemoteCluster;
  shardId: number;
  maxTaskId: number;
  signal: AbortSignal;
}

/** Where an apply moves a shard's inbound ack. */
export type AckMove = Parameters<typeof advanceInboundAck>[3];

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
  return new Set(merged.map(runKey)).size === merged.length ? merged : undefined;
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
 * Applies a page of a remote shard's tasks and moves its inbound ack in one transaction,
 * the cheapest way that holds (receiver.ts pulls the pages): in one round trip from runs
 * this process applied lately, else in two from fresh reads, else in full.
 */
export function createPageApplier(deps: {
  applier: HistoryApplier;
  writer: Pick<Writer, "transact" | "transactPipelined">;
  dlq: ReplicationDlq;
  metrics: Metrics;
  log: Logger;
}) {
  const { applier, writer, dlq, metrics, log } = deps;
  const runs = createRunCache();
  /** Remote shards ("remote/shard") whose last page read found no DLQ entry and whose last one-trip apply held: applyOneTrip may try. */
  const oneTripShards = new Set<string>();

  /**
   * Applies tasks and moves the ack from..to in one transaction; returns the runs that grew.
   * Tried in one round trip (applyOneTrip), then in two (applyPipelined), else in full (applyInFull).
   */
  async function apply(b: PageOf, tasks: ReplicationTask[], from: number, to: number): Promise<Applied> {
    const namespaces = await applier.namespacesOf(tasks);
    const lastCreate = tasks.at(-1)?.createTime;
    const move = { from, to, maxTaskId: b.maxTaskId, lastAppliedCreatedAt: lastCreate ? timestampDate(lastCreate) : undefined };
    const labels = { remote_cluster: b.remote.name };
    for (const [path, apply] of [["one-trip", applyOneTrip], ["pipelined", applyPipelined]] as const) {
      const done = await apply(b, tasks, namespaces, move);
      if (!done) continue;
      metrics.inc("replication_pages_applied", { ...labels, path });
      return done;
    }
    metrics.inc("replication_pages_applied", { ...labels, path: "full" });
    // Conflicts, rivals and gaps change runs in ways the cache does not follow.
    runs.forget(tasks.map(incoming));
    return applyInFull(b, tasks, namespaces, move);
  }

  /**
   * A page of runs this process applied lately, in one round trip: planned from their rows
   * as its commits left them (the run cache), and sent with BEGIN, the ack's move, the
   * guards and COMMIT. A guard rolls it back, and the page is applied from fresh reads,
   * when a run's row moved on (db_version), a new run's row exists or rivals an open run
   * (the insert's unique indexes), the shard has DLQ entries or its ack moved. Undefined
   * then, and when a run's row is not cached (or the last try here failed).
   */
  async function applyOneTrip(b: PageOf, tasks: ReplicationTask[], namespaces: Map<string, NamespaceRecord>, move: AckMove): Promise<Applied | undefined> {
    const shard = `${b.remote.name}/${b.shardId}`;
    const merged = mergedRuns(tasks);
    if (!merged || !oneTripShards.has(shard)) return undefined;
    const plans: PlannedApply[] = [];
    for (const t of merged) {
      const run = runs.get(t);
      const plan = run || t.firstEventId === 1 ? applier.planApply(namespaces.get(t.namespaceId)!, t, { run }) : undefined;
      if (!plan) return undefined;
      plans.push(plan);
    }
    const writes = plans.flatMap((p) => (p.write ? [p.write] : []));
    try {
      await writer.transactPipelined("ReplicateHistory", async (tx, commit) => {
        const all = [
          advanceInboundAck(tx, b.remote.name, b.shardId, move),
          dlq.guardNoneHeld(tx, b.remote.name, b.shardId),
          lockRunKeys(tx, merged),
          applier.writeAll(tx, writes),
        ];
        commit();
        await settleAll(all);
      });
    } catch {
      // The next page of the shard reads first (and finds out whether one trip may work again).
      oneTripShards.delete(shard);
      runs.forget(merged);
      return undefined;
    }
    runs.committed(writes);
    return { grown: merged.filter((_, i) => plans[i]!.events > 0).map((t) => t.runId), held: 0 };
  }

  /**
   * The usual page in two round trips (see pipelined-tx.ts): BEGIN goes out with the ack's
   * move, the shard's held runs and every run's locks and reads; COMMIT right behind the
   * writes, planned in between. Undefined, rolled back before any write, when the page needs
   * applyInFull: a held run, a run twice in the page, a divergence, a gap or a rival run.
   */
  async function applyPipelined(b: PageOf, tasks: ReplicationTask[], namespaces: Map<string, NamespaceRecord>, move: AckMove): Promise<Applied | undefined> {
    const merged = mergedRuns(tasks);
    if (!merged) return undefined;
    try {
      const { done, writes, held } = await writer.transactPipelined("ReplicateHistory", async (tx, commit) => {
        // The ack first: it moves only from where this page starts (another process may apply the
        // shard), and must fail before COMMIT goes out, not after.
        const acked = advanceInboundAck(tx, b.remote.name, b.shardId, move);
        const held = merged.length ? dlq.heldRuns(tx, b.remote.name, b.shardId) : new Set<string>();
        const reads = applier.readForApply(tx, merged.map((task) => ({ ns: namespaces.get(task.namespaceId)!, task })));
        const [heldRuns, found] = await Promise.all([held, reads, acked]);
        if (merged.some((t) => heldRuns.has(runKey(t)))) throw new NeedsFullApply();
        const plans = merged.map((t, i) => applier.planApply(namespaces.get(t.namespaceId)!, t, found[i]!));
        if (plans.some((p) => !p)) throw new NeedsFullApply();
        const writes = plans.flatMap((p) => (p!.write ? [p!.write] : []));
        const written = applier.writeAll(tx, writes);
        commit();
        await written;
        return { done: { grown: merged.filter((_, i) => plans[i]!.events > 0).map((t) => t.runId), held: 0 }, writes, held: heldRuns.size };
      });
      runs.committed(writes);
      if (held === 0) oneTripShards.add(`${b.remote.name}/${b.shardId}`);
      return done;
    } catch (e) {
      if (e instanceof NeedsFullApply) return undefined;
      throw e;
    }
  }

  /**
   * Applies tasks in an ordinary transaction: tasks of a run that already has a DLQ entry
   * from this shard go to the DLQ too, so the run never gets a gap (the merge re-applies
   * them in order); conflicts are resolved and gaps fetched from the source. Workflows
   * apply side by side, their statements pipelined on the transaction's connection; a
   * workflow's tasks in order.
   */
  async function applyInFull(b: PageOf, tasks: ReplicationTask[], namespaces: Map<string, NamespaceRecord>, move: AckMove): Promise<Applied> {
    const fetchRaw = rawFetcher(b.remote.name, b.remote.clients, log, b.signal);
    return writer.transact("ReplicateHistory", async (tx) => {
      const held = tasks.length ? await dlq.heldRuns(tx, b.remote.name, b.shardId) : new Set<string>();
      const done: Applied = { grown: [], held: 0 };
      let failed = false;
      const apply = async (workflowTasks: ReplicationTask[]) => {
        try {
          for (const t of workflowTasks.filter((t) => held.has(runKey(t)))) {
            if (failed) return; // the transaction rolls back: issue nothing more on it
            await dlq.add(tx, b.remote.name, t, 0, HELD_BEHIND);
            done.held++;
          }
          // Held runs are held whole, so the others apply apart from them, in order, merged per run.
          for (const t of mergeRunTasks(workflowTasks.filter((t) => !held.has(runKey(t))).map(incoming))) {
            if (failed) return;
            if ((await applier.applyTask(tx, namespaces.get(t.namespaceId)!, t, fetchRaw)) > 0) done.grown.push(t.runId);
          }
        } catch (e) {
          failed = true;
          throw e;
        }
      };
      // Pipelined: the ack moves with the apply, and a failure of either rolls back both.
      // Everything settles before the callback returns: no statement may reach the
      // connection after the rollback, when it serves another transaction.
      await settleAll([...byWorkflow(tasks).map(apply), advanceInboundAck(tx, b.remote.name, b.shardId, move)]);
      return done;
    });
  }


  return { apply };
}

/** Gap repair (and DLQ merge) through the source's GetWorkflowExecutionRawHistory. */
export function rawFetcher(source: string, clients: RemoteClients, log: Logger, signal?: AbortSignal): RawHistoryFetcher {
  return async (task, first, next) => {
    log.info("repairing history gap from source", { remote: source, workflowId: task.workflowId, runId: task.runId, first, next });
    const res = await clients.admin.getWorkflowExecutionRawHistory(
      {
        namespaceId: task.namespaceId, workflowId: task.workflowId, runId: task.runId, firstEventId: BigInt(first), nextEventId: BigInt(next),
        // The task's branch, which need not be the source's current one any more.
        versionHistory: versionHistoryToProto(task.versionHistory),
      },
      { signal, timeoutMs: 30_000 },
    );
    if (res.events.length !== next - first || Number(res.events[0]?.eventId) !== first) {
      throw new Error(`source ${source} returned ${res.events.length} events for ${task.workflowId} run ${task.runId} [${first}, ${next})`);
    }
    return res.events;
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
