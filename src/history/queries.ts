import { z } from "zod";
import { and, desc, eq, gte, like, lt, lte, or, sql } from "drizzle-orm";
import { failedPrecondition, invalidArgument, notFound, unavailable } from "../errors";
import { createLongPolls } from "../long-polls";
import { nextTurn } from "../next-turn";
import type { NamespaceRecord, NamespaceRegistry } from "../namespace/registry";
import { clampPage } from "../namespace/registry";
import type { Db, Tx } from "../persistence/database";
import { decodeToken, encodeToken } from "../persistence/page-token";
import { executions, historyBranchEvents, historyEvents, type VersionHistoryItem } from "../persistence/schema";
import { readRunEvents, type ExecutionRow } from "./execution-store";
import { checkIdLengths } from "./id-limits";
import { listen, type EventNotifier } from "./notifier";
import { shown } from "../shown";
import { lastEventIdOf, versionAt } from "../../replication/version-history";
import { loadBranches, readEventsOf, runOf } from "./branch-store";

/**
 * GetWorkflowExecutionHistory's token: the run, the next event id, the workflow, and v, the
 * version of the event before next: with its id, the branch the pages before it read (one
 * version is one cluster's, so an event id and version name a branch's whole prefix, as
 * Temporal's version history item does); b, that branch's id (0: the current one, else a kept
 * one), which a plain page reads on along as Temporal reads its token's branch token.
 * workflowId, v and b are absent from tokens written before them (no b: the current branch).
 */
const HISTORY_TOKEN = z.object({
  runId: z.string(), next: z.number().int().min(1), workflowId: z.string().optional(), v: z.number().int().optional(), b: z.number().int().min(0).optional(),
});
/** ListWorkflowExecutions' token: the last run's start time and id. */
const LIST_TOKEN = z.object({ t: z.string(), r: z.string() });

/** The run a GetWorkflowExecutionHistory token names; undefined for a token that is not one (the read refuses it). */
export function historyTokenRunId(token: Uint8Array): string | undefined {
  try {
    return decodeToken(token, HISTORY_TOKEN).runId;
  } catch {
    return undefined;
  }
}

export interface ListFilter {
  status?: string;
  workflowType?: string;
  workflowIdPrefix?: string;
  startTimeMin?: Date;
  startTimeMax?: Date;
}

export interface QueryDeps {
  db: Db;
  namespaces: NamespaceRegistry;
  notifier: EventNotifier;
  /** How often a history long poll re-reads while it waits (writers in other processes do not notify). */
  recheckMs?: number;
}

/**
 * Reads that long polls of one run at one position share. A commit wakes every poll following
 * the run at once, and each read the run and its new events again: 50 followers cut the run's
 * writes from about 340 to 117 a second. A read starts a turn after it is asked for, and
 * the polls woken by the same commit (each listening again before it asks) join it until
 * then; one that asks after it started reads anew, so no poll takes an answer read before it
 * listened, which could miss a commit between the two.
 */
function createSharedReads() {
  const pending = new Map<string, { started: boolean; result: Promise<unknown> }>();
  return {
    read<T>(key: string, read: () => Promise<T>): Promise<T> {
      const joined = pending.get(key);
      if (joined && !joined.started) return joined.result as Promise<T>;
      const entry = { started: false, result: undefined as unknown as Promise<T> };
      entry.result = nextTurn()
        .then(() => {
          entry.started = true;
          return read();
        })
        .finally(() => {
          if (pending.get(key) === entry) pending.delete(key);
        });
      pending.set(key, entry);
      return entry.result;
    },
  };
}

/** Reads of executions and histories; serve active and passive clusters alike. */
export function createHistoryQueries({ db, namespaces, notifier, recheckMs = 1000 }: QueryDeps) {
  const polls = createLongPolls(() => unavailable("this server is shutting down; retry"));
  const followers = createSharedReads();
  async function readableNamespace(name: string): Promise<NamespaceRecord> {
    const ns = await namespaces.getByName(name);
    if (ns.state === "DELETED") throw notFound(`namespace ${name} not found`);
    return ns;
  }

  async function findRun(ns: NamespaceRecord, workflowId: string, runId: string): Promise<ExecutionRow> {
    if (!workflowId) throw invalidArgument("workflow id is required");
    // Before the lookup: a not-found answer (and its log line) quotes them.
    checkIdLengths(["workflow id", workflowId], ["run id", runId]);
    const key = and(eq(executions.namespaceId, ns.id), eq(executions.workflowId, workflowId));
    const [row] = await db
      .select()
      .from(executions)
      .where(runId ? and(key, eq(executions.runId, runId)) : key)
      .orderBy(desc(sql`${executions.status} = 'RUNNING'`), desc(executions.startTime), desc(executions.runId))
      .limit(1);
    if (!row) throw notFound(`workflow execution ${workflowId}${runId ? ` run ${runId}` : ""} not found in namespace ${ns.name}`);
    return row;
  }

  /**
   * The run and up to size events of its current branch from `from`, as one branch: a commit
   * between the two reads (a conflict's switch to another branch) answered the run of one branch
   * with events of the other. Events the run's version history does not hold at their version
   * (or not yet: appended since) read the run again, and, when it does not hold them either, the events.
   */
  async function readPage(ns: NamespaceRecord, workflowId: string, runId: string, from: number, size: number) {
    const eventsOf = (run: ExecutionRow) => readRunEvents(db, run, from, { limit: size, before: pageEnd(run, from, size) });
    let run = await findRun(ns, workflowId, runId);
    const events = await eventsOf(run);
    if (onBranch(run, events)) return { run, events };
    run = await findRun(ns, workflowId, run.runId);
    return { run, events: onBranch(run, events) ? events : await eventsOf(run) };
  }

  /**
   * A plain page of the kept branch (a conflict's loser) that holds the token's position, the
   * token's own branch first: the run switched away from the branch the earlier pages read, and
   * they read on along it. Refused when no branch of the run holds it.
   */
  async function keptBranchPage(run: ExecutionRow, pos: { next: number; v: number; b?: number }, size: number) {
    const holding = (await loadBranches(db, run)).filter((br) => versionAt(br.versionHistory, pos.next - 1) === pos.v);
    const branch = holding.find((br) => br.branchId === pos.b) ?? holding[0];
    if (!branch) throw branchChanged(run, pos.next);
    const end = lastEventIdOf(branch.versionHistory) + 1;
    const count = Math.max(Math.min(size, end - pos.next), 0);
    const { events, before } = await readBranchEvents(db, run, branch.versionHistory, pos.next, count, HISTORY_PAGE_BYTES);
    const next = pos.next + events.length;
    // A branch whose events this cluster does not all hold ends at the first it lacks, as ListHistoryBranches ends it.
    const more = next === before && next < end;
    const token = { runId: run.runId, next, workflowId: run.workflowId, v: Number(events.at(-1)?.version ?? pos.v), b: branch.branchId };
    return { events, runId: run.runId, nextPageToken: more ? encodeToken(token) : new Uint8Array() };
  }

  /**
   * One page of a run's history from the token's event id. Without waitNewEvent the
   * token is set only while more events exist now; with it, until the run is closed and
   * every event returned, and an empty page first waits up to waitMs for a new event.
   * A token whose branch the run switched away from reads on along it (keptBranchPage);
   * a long poll there is refused.
   */
  async function readHistory(req: {
    namespace: string;
    workflowId: string;
    runId: string;
    pageSize: number;
    token: Uint8Array;
    waitNewEvent: boolean;
    waitMs: number;
    signal?: AbortSignal;
  }) {
    const ns = await readableNamespace(req.namespace);
    const size = clampPage(req.pageSize);
    const pos = req.token.length ? decodeToken(req.token, HISTORY_TOKEN) : undefined;
    // The token names its run; one of another run would page through that run's events,
    // answered as if they were the requested run's. One of another workflow was looked up as
    // a run of this one: NOT_FOUND, naming a run the caller never asked for.
    if (pos?.workflowId !== undefined && pos.workflowId !== req.workflowId) {
      throw invalidArgument(`next_page_token is for workflow ${shown(pos.workflowId)}, not the requested workflow ${shown(req.workflowId)}`);
    }
    if (pos && req.runId && pos.runId !== req.runId) throw invalidArgument(`next_page_token is for run ${shown(pos.runId)}, not the requested run ${shown(req.runId)}`);
    const runId = pos?.runId ?? req.runId;
    const from = pos?.next ?? 1;
    const deadline = Date.now() + req.waitMs;
    for (;;) {
      // Listening before the read when the run is known (from the token or the request).
      // Re-read at least every recheckMs: writers in other processes do not notify us.
      const listenFor = (key: string) => listen(notifier, key, Math.min(Math.max(deadline - Date.now(), 0), recheckMs), req.signal);
      let listening = req.waitNewEvent && runId ? listenFor(runId) : undefined;
      try {
        const read = () => readPage(ns, req.workflowId, runId, from, size);
        const { run, events } = await (req.waitNewEvent ? followers.read(`${ns.id}\u0000${req.workflowId}\u0000${runId}\u0000${from}\u0000${size}`, read) : read());
        if (pos?.v !== undefined && from > 1 && versionAt(run.versionHistory, from - 1) !== pos.v) {
          // A long poll follows the current branch, as Temporal's answers CurrentBranchChanged.
          if (req.waitNewEvent) throw branchChanged(run, from);
          return await keptBranchPage(run, { ...pos, v: pos.v }, size);
        }
        const next = from + events.length;
        const more = next < run.nextEventId;
        const open = run.status === "RUNNING";
        const keepToken = more || (req.waitNewEvent && open);
        const v = Number(events.at(-1)?.version ?? versionAt(run.versionHistory, next - 1) ?? 0);
        const page = { events, runId: run.runId, nextPageToken: keepToken ? encodeToken({ runId: run.runId, next, workflowId: run.workflowId, v, b: 0 }) : new Uint8Array() };
        const left = deadline - Date.now();
        if (events.length > 0 || !req.waitNewEvent || !open || left <= 0 || req.signal?.aborted) return page;
        listening ??= listenFor(run.runId);
        await listening.woke;
      } finally {
        listening?.cancel();
      }
    }
  }

  async function list(namespace: string, pageSize: number, token: Uint8Array, filter: ListFilter) {
    const ns = await readableNamespace(namespace);
    const size = clampPage(pageSize);
    const after = token.length ? decodeToken(token, LIST_TOKEN) : undefined;
    const conditions = [eq(executions.namespaceId, ns.id)];
    if (filter.status) conditions.push(eq(executions.status, filter.status));
    if (filter.workflowType) conditions.push(eq(executions.workflowType, filter.workflowType));
    if (filter.workflowIdPrefix) conditions.push(like(executions.workflowId, `${escapeLike(filter.workflowIdPrefix)}%`));
    if (filter.startTimeMin) conditions.push(gte(executions.startTime, filter.startTimeMin));
    if (filter.startTimeMax) conditions.push(lte(executions.startTime, filter.startTimeMax));
    if (after) {
      const t = new Date(after.t);
      if (Number.isNaN(t.getTime())) throw invalidArgument("next_page_token is not valid");
      // start_time <= t, implied by the rest, bounds the namespace/start-time index scan, where
      // the OR alone is a filter over every newer run (38 ms a page behind 43,000 of them).
      conditions.push(lte(executions.startTime, t), or(lt(executions.startTime, t), and(eq(executions.startTime, t), lt(executions.runId, after.r)))!);
    }
    const rows = await db
      .select()
      .from(executions)
      .where(and(...conditions))
      .orderBy(desc(executions.startTime), desc(executions.runId))
      .limit(size + 1);
    const items = rows.slice(0, size);
    const last = items.at(-1);
    const nextPageToken = rows.length > size && last ? encodeToken({ t: last.startTime.toISOString(), r: last.runId }) : new Uint8Array();
    return { items, nextPageToken };
  }

  return {
    describe: async (namespace: string, workflowId: string, runId: string) =>
      findRun(await readableNamespace(namespace), workflowId, runId),
    /** A page of history; a long poll (waitNewEvent) ends early, with what it has, when the server stops. */
    getHistory: (req: Parameters<typeof readHistory>[0]) =>
      req.waitNewEvent ? polls.run(req.signal, (signal) => readHistory({ ...req, signal })) : readHistory(req),
    list,
    /** Ends open history long polls and refuses new ones; resolves once none runs. */
    stopLongPolls: polls.end,
  };
}

export type HistoryQueries = ReturnType<typeof createHistoryQueries>;

/** Whether run's version history holds each of events at its version. */
const onBranch = (run: ExecutionRow, events: { eventId: bigint; version: bigint }[]) =>
  events.every((e) => versionAt(run.versionHistory, Number(e.eventId)) === Number(e.version));

/** The refusal of a long poll whose token's branch is no longer run's current one (Temporal's CurrentBranchChanged), or a page's that no branch holds. */
const branchChanged = (run: ExecutionRow, from: number) =>
  failedPrecondition(
    `the history of workflow ${shown(run.workflowId)} run ${shown(run.runId)} changed branch while it was paged (a conflict was resolved after a forced failover): ` +
      `event ${from - 1} of the branch the earlier pages read is no longer on the current branch; read the history again from the first page`,
  );

const escapeLike = (s: string) => s.replace(/[\\%_]/g, (c) => `\\${c}`);

/**
 * Most bytes of event attributes (as stored, JSON) a history page carries past its first
 * event. Pages are counted in events (up to 1,000), and each event may hold a payload up to
 * limits.blobSizeLimitError: a page of 100 signals of 1 MB was one 100 MB answer.
 */
export const HISTORY_PAGE_BYTES = 4 << 20;

/**
 * The event id a page of run's history from `from` (up to limit events) ends before, in SQL:
 * after the event that brings the page's attributes to HISTORY_PAGE_BYTES (the first always
 * goes), or at limit; run's next event id when there is nothing to read. Raw history pages
 * (raw-history.ts) pass a budget of their own. The page is measured
 * in chunks of 1, 2, 4, ... events by id (they are consecutive, as the token's next id takes
 * them to be) until one reaches the budget, then event by event within that chunk: a page of
 * large events measures about twice what it sends, not a page size's (100 events of 1 MB:
 * 80 s a read), and one of small events takes ten steps, not one per event (a walk event by
 * event made a page of 1,000 small events 2.7x as slow to read).
 *
 * An event's measure is its stored size where it is stored uncompressed (pg_column_size: read
 * from the value's header or TOAST pointer, not its data), and its rendered JSON text only
 * where it is compressed, whose stored size says little of what it renders to. Rendering
 * every event read each large payload from TOAST and wrote it out as text, twice, before the
 * page's own read: 138 of a 3 MiB page's 210 ms. A stored jsonb string is its text without
 * quotes and escapes; a large event is its payloads' base64, which has neither.
 *
 * branches: the run's non-current branches' events are measured too (a page of another branch
 * than the current one, raw-history.ts): an id held by several branches counts once for each,
 * so such a page may end early, never late.
 */
export function pageEnd(run: ExecutionRow, from: number, limit: number, budget: number = HISTORY_PAGE_BYTES, { branches = false } = {}) {
  const { e, events, key, size } = measured(run, branches);
  const chunk = sql`select max(${e("event_id")}) as last, coalesce(sum(${size}), 0)::bigint as bytes from ${events} e where ${key} and ${e("event_id")} > walk.last and ${e("event_id")} <= walk.last + walk.step and ${e("event_id")} < ${from + limit}`;
  const walk = sql`walk(last, bytes, step, k) as (select ${from - 1}::bigint, 0::bigint, 1::bigint, 0 union all select c.last, walk.bytes + c.bytes, walk.step * 2, walk.k + 1 from walk cross join lateral (${chunk}) c where walk.bytes < ${budget} and c.last is not null)`;
  const through = sql`select ${e("event_id")} as event_id, prev.bytes + sum(${size}) over (order by ${e("event_id")}) as through from ${events} e where ${key} and ${e("event_id")} > prev.last and ${e("event_id")} <= fin.last`;
  const crossing = sql`select min(q.event_id) + 1 from (${through}) q where q.through >= ${budget}`;
  const steps = sql`fin as (select * from walk order by k desc limit 1), prev as (select * from walk where k = (select k - 1 from fin))`;
  return sql<number>`(with recursive ${walk}, ${steps} select case when fin.k = 0 then ${run.nextEventId} when fin.bytes < ${budget} then fin.last + 1 else (${crossing}) end from fin left join prev on true)`;
}

/** What pageEnd measures, in SQL: the events (of e), the run's key over them, and an event's measure. */
function measured(run: ExecutionRow, branches: boolean) {
  const e = (column: string) => sql.raw(`e.${column}`);
  const columns = sql.raw("namespace_id, workflow_id, run_id, event_id, attributes");
  const events = branches ? sql`(select ${columns} from ${historyEvents} union all select ${columns} from ${historyBranchEvents})` : historyEvents;
  const key = sql`${e("namespace_id")} = ${run.namespaceId} and ${e("workflow_id")} = ${run.workflowId} and ${e("run_id")} = ${run.runId}`;
  const size = sql`(case when pg_column_compression(${e("attributes")}) is null then pg_column_size(${e("attributes")}) else octet_length(${e("attributes")}::text) end)::bigint`;
  return { e, events, key, size };
}

/**
 * Events [from, before) of one of run's branches, before where a page ends (pageEnd) within
 * count events and budget bytes: its current branch without history, else the kept branch of
 * that version history. A history page along a kept branch and a ListHistoryBranches page read so.
 */
export async function readBranchEvents(db: Db | Tx, run: ExecutionRow, history: VersionHistoryItem[] | undefined, from: number, count: number, budget: number) {
  if (count <= 0) return { events: [], before: from };
  const [row] = await db.select({ end: sql<number>`${pageEnd(run, from, count, budget, { branches: history !== undefined })}`.mapWith(Number) }).from(executions).where(runOf(executions, run));
  const end = row?.end ?? 0;
  const before = end > from ? Math.min(end, from + count) : from + count;
  const events = history ? await readEventsOf(db, run, history, from, before) : await readRunEvents(db, run, from, { before });
  return { events, before };
}

/** The measure pageEnd gives events [from, before) of run, in SQL (branches: as pageEnd's). */
export function rangeBytes(run: ExecutionRow, from: number, before: number, { branches = false } = {}) {
  const { e, events, key, size } = measured(run, branches);
  return sql<number>`(select coalesce(sum(${size}), 0)::bigint from ${events} e where ${key} and ${e("event_id")} >= ${from} and ${e("event_id")} < ${before})`;
}
