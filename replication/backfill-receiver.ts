import { Code, ConnectError } from "@connectrpc/connect";
import type { ExecutionForReplication } from "../src/gen/tern/admin/v1/backfill_pb";
import { and, eq, inArray } from "drizzle-orm";
import { holdNamespaces } from "../src/history/namespace-guard";
import type { EventNotifier } from "../src/history/notifier";
import type { Writer } from "../src/history/writer";
import type { NamespaceRecord, NamespaceRegistry } from "../src/namespace/registry";
import type { Logger } from "../src/observability/log";
import type { Db } from "../src/persistence/database";
import { databaseBusy, loggableError, notFound, TernError } from "../src/errors";
import { encodeToken } from "../src/persistence/page-token";
import { executions, type VersionHistoryItem } from "../src/persistence/schema";
import { loadBranches, versionHistoryOf, type RunKey } from "../src/history/branch-store";
import { HistoryDivergenceError, isTaskFailure, RetryableReplicationError, type HistoryApplier, type IncomingTask } from "./applier";
import { backfillJob, pendingBackfillJobs, recordBackfillError, recordBackfillTotal, recordBackfillPage, type BackfillCursor, type BackfillJob } from "./backfill-jobs";
import type { RemoteCluster, ReplicationStream, StreamReport } from "./manager";
import { inTurns } from "../src/in-turns";
import { sleep } from "../src/sleep";
import { fetchOutside } from "./gap-fetch";
import { rawFetcher, RAW_HISTORY_PAGE_BYTES } from "./page-transactions";
import { firstDivergence, lastEventIdOf, versionHistoryFromProto, versionHistoryToProto, versionHistoryUpTo } from "./version-history";

/** A listed run to fetch: its current branch from `from` (undefined: held here), then the kept branches this cluster lacks. */
interface RunToFill {
  run: ExecutionForReplication;
  from?: number;
}

/** Attempts at a run that fails of its own before the job goes on without it, RUN_RETRY_MS more apart each. */
const RUN_ATTEMPTS = 3;
const RUN_RETRY_MS = 200;

/** Why a run was not brought whole: a divergence (conflict resolution's business), or a failure of the run's own (failed). */
interface RunProblem {
  message: string;
  failed: boolean;
}

export interface BackfillReceiverDeps {
  db: Db;
  applier: HistoryApplier;
  namespaces: NamespaceRegistry;
  /** Transactions with retries and persistence metrics. */
  writer: Pick<Writer, "transact">;
  /** Woken per run that grew, for history long polls here. */
  notifier: EventNotifier;
  log: Logger;
  now?: () => Date;
  pageSize?: number;
  /** Runs fetched and applied at once. */
  concurrency?: number;
  /** Most bytes of events one raw history answer brings (default RAW_HISTORY_PAGE_BYTES). */
  historyPageBytes?: number;
  /** How long an idle stream waits before looking for jobs again (wake() cuts it short). */
  idleMs?: number;
}

/**
 * The receiving side of backfill (its counterpart is backfill-sender.ts): one stream per
 * remote runs the unfinished jobs whose source is that remote. Each page of the source's
 * runs is applied through the normal history applier (one transaction per page of a run's
 * events, so the same rules and locks as replication apply: present runs are skipped, shorter
 * ones extended) and then the job's cursor moves, so a restart resumes at the page it was on.
 * It stops with the connection (the manager aborts it) and resumes when re-enabled.
 */
export function createBackfillReceiver(deps: BackfillReceiverDeps) {
  const { db, applier, writer, log, now = () => new Date(), pageSize = 200, concurrency = 8, idleMs = 30_000, historyPageBytes = RAW_HISTORY_PAGE_BYTES } = deps;
  let generation = 0;
  const waiters = new Set<() => void>();

  function wake(): void {
    generation++;
    for (const w of waiters) w();
    waiters.clear();
  }

  function idle(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, idleMs);
      signal.addEventListener("abort", done);
      waiters.add(done);
    });
  }

  /**
   * The listed runs this cluster lacks, holds fewer events of, or holds on a branch that
   * diverged from the source's (a split brain: both wrote the run at the same event ids, and
   * the one holding more events may be the one whose branch loses), each with the first
   * event id to fetch: where this cluster's copy ends, or where it diverges, so conflict
   * resolution gets the source's branch from the fork a page at a time. Runs with kept
   * branches on the source come too (from undefined when the current branch is held).
   */
  async function lacking(ns: NamespaceRecord, page: ExecutionForReplication[]): Promise<RunToFill[]> {
    if (page.length === 0) return [];
    const local = await db
      .select({ runId: executions.runId, nextEventId: executions.nextEventId, versionHistory: executions.versionHistory })
      .from(executions)
      .where(and(eq(executions.namespaceId, ns.id), inArray(executions.runId, page.map((e) => e.runId))));
    const have = new Map(local.map((r) => [r.runId, r]));
    return page.flatMap((run) => {
      const held = have.get(run.runId);
      // A source from before version histories were listed sends none: only shorter copies are known then.
      const source = versionHistoryFromProto(run.versionHistory?.items);
      const fork = held && source.length ? firstDivergence(held.versionHistory, source) : undefined;
      const from = !held ? 1 : fork ?? (held.nextEventId < Number(run.nextEventId) ? Math.max(held.nextEventId, 1) : undefined);
      return from !== undefined || run.keptBranches.length ? [{ run, from }] : [];
    });
  }

  /**
   * Where to fetch a kept branch of the source from: its first event that differs from this
   * cluster's current branch; undefined when this cluster holds it already (on its current
   * branch or a kept one of its own) or lacks the run.
   */
  async function keptBranchFrom(ref: RunKey, branch: VersionHistoryItem[]): Promise<number | undefined> {
    const current = await versionHistoryOf(db, ref);
    if (!current) return undefined;
    const holds = (history: VersionHistoryItem[]) => firstDivergence(history, branch) === undefined && lastEventIdOf(history) >= lastEventIdOf(branch);
    if (holds(current) || (await loadBranches(db, ref)).some((b) => holds(b.versionHistory))) return undefined;
    return firstDivergence(current, branch) ?? lastEventIdOf(current) + 1;
  }

  /**
   * Fetches one run's history a page at a time (at most historyPageBytes of events each) and
   * applies each page as replication would a task of those events, with the version history up
   * to its last: its current branch from `from`, then each kept branch this cluster lacks (a
   * losing branch: kept here too, and its signals re-applied where the namespace is active).
   * Returns the problem when it conflicts, or fails of its own. A gap (the run grew here meanwhile
   * on another branch) is fetched from the source outside the apply's transaction.
   */
  async function applyRun(remote: RemoteCluster, ns: NamespaceRecord, { run: e, from }: RunToFill, signal: AbortSignal): Promise<RunProblem | undefined> {
    const ref = { namespaceId: ns.id, workflowId: e.workflowId, runId: e.runId };
    const fetchRaw = rawFetcher(remote.name, remote.clients, log, signal);
    let added = 0;
    /**
     * Brings events from `start` of `listed` (the branch the listing named, or a kept one), or
     * of the source's current branch, a page at a time. The pages are of that branch even when
     * the source switches its current branch meanwhile (this cluster's re-applied signals win
     * there): the ids past `start` of its new current branch are another branch's, or none, and
     * ended the job early, the listed branch left behind. What the source's branch gains after
     * the listing comes by replication.
     */
    const bring = async (start: number, listed?: VersionHistoryItem[]) => {
      let branch = listed?.length ? listed : undefined;
      let next = branch ? lastEventIdOf(branch) + 1 : Infinity;
      for (let first = start; first < next; ) {
        const end = branch ? { nextEventId: BigInt(next), versionHistory: versionHistoryToProto(branch) } : {};
        const raw = await remote.clients.admin.getWorkflowExecutionRawHistory(
          { ...ref, ...end, firstEventId: BigInt(first), maximumPageBytes: BigInt(historyPageBytes) },
          { signal, timeoutMs: 30_000 },
        );
        // A source that lists and sends no version history is followed by its current branch's end.
        const served = versionHistoryFromProto(raw.versionHistory?.items);
        branch ??= served.length ? served : undefined;
        next = branch ? lastEventIdOf(branch) + 1 : Number(raw.nextEventId);
        const last = Number(raw.events.at(-1)?.eventId ?? first - 1);
        if (last < first) break;
        const task: IncomingTask = {
          ...ref,
          firstEventId: first,
          nextEventId: last + 1,
          versionHistory: versionHistoryUpTo(served, last),
          events: raw.events,
        };
        // With the stream's signal: a stopping server cancels a page waiting for a lock rather than wait it out.
        added += await fetchOutside(fetchRaw, (fetch) =>
          writer.transact("BackfillHistory", async (tx) => {
            // A delete of the namespace here is ordered with the page (holdNamespaces): before, a run brought
            // while it was deleted was committed after the delete, of no namespace. One round trip per page.
            await holdNamespaces(tx, [ns.id], () => new RetryableReplicationError(`namespace ${ns.name} was deleted here meanwhile`));
            return applier.applyTask(tx, ns, task, fetch);
          }, signal),
        );
        first = last + 1;
      }
    };
    /** From the first event this cluster lacks: a run half brought by a stopped backfill, or by replication, is not fetched again from its start. */
    const fill = async () => {
      if (from !== undefined) await bring(from, versionHistoryFromProto(e.versionHistory?.items));
      for (const kept of e.keptBranches) {
        const branch = versionHistoryFromProto(kept.items);
        const start = await keptBranchFrom(ref, branch);
        if (start !== undefined) await bring(start, branch);
      }
    };
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          await fill();
          return undefined;
        } catch (err) {
          // Deleted on the source since it was listed (retention): nothing (more) to bring.
          if (err instanceof ConnectError && err.code === Code.NotFound) return undefined;
          // A divergent run is conflict resolution's business; it must not stall the other runs.
          if (err instanceof HistoryDivergenceError) {
            log.warn("backfill skipped a divergent run", { remote: remote.name, workflowId: e.workflowId, runId: e.runId, error: err.message });
            return { message: err.message, failed: false };
          }
          // Nor must a run whose answer or apply fails of its own: retried with its page, it held
          // the job there for good. Past a few attempts (a race with a conflict settled on either
          // side fails one) the job goes on, to end FAILED. The link's or this database's failures
          // (unreachable, busy, stopping) stop the page, which is retried.
          if (signal.aborted || !isTaskFailure(err) || databaseBusy(err)) throw err;
          if (attempt < RUN_ATTEMPTS) {
            await sleep(RUN_RETRY_MS * attempt, signal);
            continue;
          }
          log.error("backfill could not bring a run", { remote: remote.name, workflowId: e.workflowId, runId: e.runId, attempts: attempt, error: loggableError(err) });
          return { message: `run ${e.workflowId} ${e.runId} could not be brought: ${loggableError(err)}`, failed: true };
        }
      }
    } finally {
      if (added > 0) deps.notifier.notify(e.runId);
    }
  }

  /** Applies runs with at most `concurrency` in flight; the first failure rejects. */
  async function applyPage(remote: RemoteCluster, ns: NamespaceRecord, runs: RunToFill[], signal: AbortSignal): Promise<RunProblem[]> {
    const problems = await inTurns(runs, concurrency, (run) => applyRun(remote, ns, run, signal), signal);
    if (signal.aborted) throw new Error("backfill stopped");
    return problems.filter((p): p is RunProblem => p !== undefined);
  }

  async function runJob(remote: RemoteCluster, start: BackfillJob, signal: AbortSignal, report: StreamReport): Promise<void> {
    let job = start;
    const ns = await deps.namespaces.getById(job.namespaceId);
    log.info("backfill running", { remote: remote.name, namespace: ns.name, done: job.done, resumed: !!job.cursor });
    while (!signal.aborted) {
      const cursor = job.cursor as BackfillCursor | null;
      const res = await remote.clients.backfill.listExecutionsForReplication(
        { namespaceId: ns.id, pageSize, nextPageToken: cursor ? encodeToken(cursor) : new Uint8Array() },
        { signal, timeoutMs: 30_000 },
      ).catch((e: unknown) => {
        if (e instanceof ConnectError && e.code === Code.NotFound) {
          throw notFound(`cluster ${remote.name} does not hold namespace ${ns.name} (deleted there, or not replicated there yet); start the backfill again once it does`);
        }
        throw e;
      });
      report.ok();
      if (Number(res.total) > job.total) job = (await recordBackfillTotal(db, job, Number(res.total), now())) ?? job;
      const problems = await applyPage(remote, ns, await lacking(ns, res.executions), signal);
      const failures = problems.filter((p) => p.failed);
      const last = res.executions.at(-1);
      const finished = res.nextPageToken.length === 0;
      const saved = await recordBackfillPage(
        db,
        job,
        {
          cursor: last ? { workflowId: last.workflowId, runId: last.runId } : cursor,
          applied: res.executions.length,
          total: Number(res.total),
          finished,
          lastError: (failures[0] ?? problems[0])?.message,
          failed: failures.length,
        },
        now(),
      );
      if (!saved) {
        // Started again meanwhile: go on with it as it stands. Failing here left this stale
        // runner's complaint as the last error of the job, which then ended DONE with it.
        const current = await backfillJob(db, job);
        if (current?.status !== "RUNNING") {
          log.info("backfill stopped", { remote: remote.name, namespace: ns.name, status: current?.status, reason: current?.lastError });
          return;
        }
        job = current;
        continue;
      }
      job = saved;
      if (finished) {
        log.info("backfill done", { remote: remote.name, namespace: ns.name, runs: job.done, failed: job.failed });
        return;
      }
    }
  }

  async function run(remote: RemoteCluster, signal: AbortSignal, report: StreamReport): Promise<void> {
    while (!signal.aborted) {
      const seen = generation;
      const jobs = await pendingBackfillJobs(db, remote.name);
      // Nothing to fill: the stream is well, though it asks the remote nothing (a run's first page says so otherwise).
      if (!jobs.length) report.idle();
      for (const job of jobs) {
        try {
          await runJob(remote, job, signal, report);
        } catch (e) {
          if (signal.aborted) return;
          // The namespace was deleted here, or the source lacks it: nothing to fill until an operator starts it again.
          const gone = e instanceof TernError && e.kind === "not_found";
          await recordBackfillError(db, job, loggableError(e), now(), gone).catch(() => {});
          if (!gone) throw e;
          log.warn("backfill failed", { remote: remote.name, namespaceId: job.namespaceId, error: loggableError(e) });
        }
      }
      if (generation === seen) await idle(signal);
    }
  }

  return {
    /** The backfill stream of one remote (add it to the manager's streams). */
    stream: { name: "backfill", run } satisfies ReplicationStream,
    /** A job was started: streams look for work now. */
    wake,
  };
}

export type BackfillReceiver = ReturnType<typeof createBackfillReceiver>;
