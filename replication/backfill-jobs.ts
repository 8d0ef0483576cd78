import { and, eq, ne, notInArray, sql } from "drizzle-orm";
import type { Db, Tx } from "../src/persistence/database";
import { backfillJobs, namespaces } from "../src/persistence/schema";
import { listsClusters } from "../src/namespace/lists-clusters";

export type BackfillJob = typeof backfillJobs.$inferSelect;

/** Where a job stands in the source's listing: after this run (exclusive). */
export interface BackfillCursor {
  workflowId: string;
  runId: string;
}

type Key = { namespaceId: string; sourceCluster: string };
const where = (k: Key) => and(eq(backfillJobs.namespaceId, k.namespaceId), eq(backfillJobs.sourceCluster, k.sourceCluster));
/** The job as its runner last saw it: not restarted meanwhile (startBackfillJob), nor moved on, nor stopped (stopBackfillJobs). */
const unchanged = (job: BackfillJob) =>
  and(where(job), eq(backfillJobs.done, job.done), eq(backfillJobs.startedAt, job.startedAt), eq(backfillJobs.status, "RUNNING"));

/**
 * Starts (or restarts from the beginning) a backfill of namespaceId from sourceCluster,
 * in the caller's transaction: written with the namespace change that made it needed,
 * so a crash cannot lose it.
 */
export async function startBackfillJob(tx: Tx, k: Key, now: Date): Promise<void> {
  const fresh = { status: "RUNNING", cursor: null, total: 0, done: 0, failed: 0, lastError: null, retryError: null, startedAt: now, updatedAt: now };
  await tx.insert(backfillJobs).values({ ...k, ...fresh }).onConflictDoUpdate({ target: [backfillJobs.namespaceId, backfillJobs.sourceCluster], set: fresh });
}

/**
 * In the transaction that makes this cluster join namespaceId: its backfill from source (the
 * active cluster), and the jobs it left over from other sources dropped (STOPPED when it was
 * taken out, or FAILED). Source holds every run they were to bring; kept, one from a cluster still
 * listed stood unfinished for good, and every failover to this cluster was refused for it.
 */
export async function startJoinBackfill(tx: Tx, namespaceId: string, source: string, now: Date): Promise<void> {
  const others = and(eq(backfillJobs.namespaceId, namespaceId), ne(backfillJobs.sourceCluster, source), ne(backfillJobs.status, "RUNNING"));
  await tx.delete(backfillJobs).where(others);
  await startBackfillJob(tx, { namespaceId, sourceCluster: source }, now);
}

/**
 * An operator's start of a backfill (StartBackfill), in the caller's transaction: the job it
 * replaced as it stood (undefined: none), or, a RUNNING job left as it is since restart was not
 * asked, that job as `running`. Started again unasked, a long job lost its progress.
 */
export async function startBackfillJobAsked(tx: Tx, k: Key, now: Date, restart: boolean): Promise<{ replaced?: BackfillJob; running?: BackfillJob }> {
  // Locked: a runner's page recorded meanwhile would make the progress reported stale.
  const [before] = await tx.select().from(backfillJobs).where(where(k)).for("update");
  if (before?.status === "RUNNING" && !restart) return { running: before };
  await startBackfillJob(tx, k, now);
  return { replaced: before };
}

/**
 * In the transaction that first connects remote: a backfill from it of each global namespace
 * that lists both clusters. They were members of it unconnected (the namespace came through a
 * third cluster), and what remote wrote meanwhile is not in its replication queue any more
 * (cleaned up once the clusters connected to it had acked it): replication alone never brings it.
 */
export async function startBackfillsFrom(tx: Tx, remote: string, here: string, now: Date): Promise<void> {
  const rows = await tx.select({ id: namespaces.id }).from(namespaces).where(and(eq(namespaces.isGlobal, true), listsClusters(here, remote)));
  for (const r of rows) await startBackfillJob(tx, { namespaceId: r.id, sourceCluster: remote }, now);
}

/**
 * Ends the running backfills of a namespace, or from a source cluster, STOPPED, saying why: in the
 * transaction that takes this cluster out of the namespace's clusters (they went on bringing runs
 * of a namespace no longer replicated here; added back, the cluster starts one again), or that
 * removes the source (they stood RUNNING for good, their status advising to connect it again).
 */
export async function stopBackfillJobs(tx: Tx, of: { namespaceId: string } | { sourceCluster: string } | Key, why: string, now: Date): Promise<void> {
  const which = and(
    "namespaceId" in of ? eq(backfillJobs.namespaceId, of.namespaceId) : undefined,
    "sourceCluster" in of ? eq(backfillJobs.sourceCluster, of.sourceCluster) : undefined,
  );
  await tx
    .update(backfillJobs)
    .set({ status: "STOPPED", lastError: why, retryError: null, updatedAt: now })
    .where(and(which, eq(backfillJobs.status, "RUNNING")));
}

/** In the transaction that removes remote: the running jobs from it end STOPPED (stopBackfillJobs), saying what to do instead. */
export function stopBackfillsFrom(tx: Tx, remote: string, now: Date): Promise<void> {
  const why = `stopped: its source cluster ${remote} was removed here (cluster remove); to bring what this cluster lacks, start a backfill from another of the namespace's clusters (backfill --from)`;
  return stopBackfillJobs(tx, { sourceCluster: remote }, why, now);
}

/**
 * In the transaction that changes a namespace's clusters: its running jobs from a cluster it no
 * longer lists end STOPPED (stopBackfillJobs), saying so. They went on fetching from a cluster
 * that is no member (only its remove stopped them), and stood in the way of a failover here.
 */
export async function stopBackfillsOfNonMembers(tx: Tx, ns: { id: string; name: string; clusters: string[] }, now: Date): Promise<void> {
  const jobs = await tx
    .select({ source: backfillJobs.sourceCluster })
    .from(backfillJobs)
    .where(and(eq(backfillJobs.namespaceId, ns.id), eq(backfillJobs.status, "RUNNING"), notInArray(backfillJobs.sourceCluster, ns.clusters)));
  for (const { source } of jobs) {
    const why = `stopped: its source cluster ${source} was taken out of namespace ${ns.name} (its clusters now: ${ns.clusters.join(", ")}); to bring what this cluster lacks, start a backfill from one of them (backfill --from)`;
    await stopBackfillJobs(tx, { namespaceId: ns.id, sourceCluster: source }, why, now);
  }
}

/** The running jobs pulling from source (a FAILED one waits for an operator to start it again, not retried each round). */
export function pendingBackfillJobs(db: Db, source: string): Promise<BackfillJob[]> {
  return db.select().from(backfillJobs).where(and(eq(backfillJobs.sourceCluster, source), eq(backfillJobs.status, "RUNNING")));
}

/** Every job of a namespace, for status. */
export function backfillJobsOf(db: Db, namespaceId: string): Promise<BackfillJob[]> {
  return db.select().from(backfillJobs).where(eq(backfillJobs.namespaceId, namespaceId)).orderBy(backfillJobs.sourceCluster);
}

/** The job as it stands now; undefined when there is none. */
export async function backfillJob(db: Db, k: Key): Promise<BackfillJob | undefined> {
  const [job] = await db.select().from(backfillJobs).where(where(k));
  return job;
}

/**
 * Records a finished page: the cursor moves only after every run before it is applied,
 * so a restart redoes at most one page (idempotent). Compares the previous cursor so a
 * job restarted meanwhile (startBackfillJob) is not overwritten by a stale runner: then
 * it records nothing and returns undefined.
 */
export async function recordBackfillPage(
  db: Db,
  job: BackfillJob,
  page: { cursor: BackfillCursor | null; applied: number; total: number; finished: boolean; lastError?: string; failed?: number },
  now: Date,
): Promise<BackfillJob | undefined> {
  const done = job.done + page.applied;
  const failed = job.failed + (page.failed ?? 0);
  const lastError = page.lastError ?? job.lastError;
  const [saved] = await db
    .update(backfillJobs)
    .set({
      cursor: page.cursor as Record<string, unknown> | null,
      done,
      // The source keeps growing while we page: the final total is what was walked. It counts its
      // runs for the first page only (later pages say 0), so the job keeps the count it has.
      total: page.finished ? done : Math.max(page.total, job.total, done),
      failed,
      status: !page.finished ? "RUNNING" : failed ? "FAILED" : "DONE",
      lastError: page.finished && failed ? `${failed} of its runs could not be brought (start the backfill again to retry them); last error: ${lastError}` : lastError,
      // The page went through: whatever held it is over. Kept, it was shown beside DONE as if current.
      retryError: null,
      updatedAt: now,
    })
    .where(unchanged(job))
    .returning();
  return saved;
}

/**
 * The source's count of runs, as soon as its first page says it: a job held at its first page
 * (a run there waiting for its source or this database) said 0/0 meanwhile. Undefined when the
 * job changed underneath.
 */
export async function recordBackfillTotal(db: Db, job: BackfillJob, total: number, now: Date): Promise<BackfillJob | undefined> {
  const [saved] = await db.update(backfillJobs).set({ total, updatedAt: now }).where(unchanged(job)).returning();
  return saved;
}

/**
 * Notes why the job cannot progress: it stays RUNNING and its page is retried (retryError, until
 * a page is recorded), or ends FAILED when it never can (lastError).
 */
export async function recordBackfillError(db: Db, job: Key, error: string, now: Date, final = false): Promise<void> {
  const change = final ? { status: "FAILED", lastError: error, retryError: null } : { retryError: error };
  await db.update(backfillJobs).set({ ...change, updatedAt: now }).where(and(where(job), eq(backfillJobs.status, "RUNNING")));
}

/** How far a job is, as its row or GetBackfillStatus says. */
export interface BackfillProgress {
  sourceCluster: string;
  status: string;
  done: number | bigint;
  total: number | bigint;
}

/**
 * Why target, made active for namespace, would lack runs: a backfill of it from one of its members
 * that has not finished (RUNNING, FAILED or STOPPED), or undefined. Made active, it answered
 * NOT_FOUND for runs it had not brought yet, and a start of one of their workflow ids made a second
 * run, which won, and the run brought later was terminated as a zombie. A job from a cluster the
 * namespace no longer lists is no reason: its source may be gone for good, and what it wrote is on
 * the active cluster too.
 */
export function unfinishedBackfill(target: string, namespace: string, jobs: BackfillProgress[], members: string[]): string | undefined {
  const job = jobs.find((j) => j.status !== "DONE" && members.includes(j.sourceCluster));
  if (!job) return undefined;
  return `cluster ${target} has not finished backfilling namespace ${namespace} from ${job.sourceCluster} (${job.status}, ${job.done}/${job.total} runs; see backfill-status on ${target}): made active now, it would lack the runs it has not brought`;
}

/** Counts of jobs by status (for metrics and tests). */
export async function countBackfillJobs(db: Db): Promise<Record<string, number>> {
  const rows = await db.select({ status: backfillJobs.status, n: sql<number>`count(*)::int` }).from(backfillJobs).groupBy(backfillJobs.status);
  return Object.fromEntries(rows.map((r) => [r.status, Number(r.n)]));
}
