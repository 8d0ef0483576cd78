import { z } from "zod";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { eq, sql, type SQL } from "drizzle-orm";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import { peerUnreachable, type RemoteClientPool } from "../src/cluster/remote-client";
import { invalidArgument, notFound } from "../src/errors";
import {
  GetExecutionChecksumsResponseSchema,
  VerifyReplicationResponseSchema,
  type ExecutionChecksum,
  type GetExecutionChecksumsRequest,
  type GetExecutionChecksumsResponse,
  type VerifyReplicationRequest,
  type VerifyReplicationResponse,
} from "../src/gen/tern/admin/v1/service_pb";
import type { Db } from "../src/persistence/database";
import { decodeToken, encodeToken } from "../src/persistence/page-token";
import { rowsOf } from "../src/persistence/raw-statements";
import { clusterMetadata, executions, historyEvents as h, namespaces } from "../src/persistence/schema";
import { shown } from "../src/shown";
import { digestUnless, pagedDigest, PagedDigestProgress, renderedBytesBound, SQL_DIGEST_BYTES } from "./run-digest";
import { behindOf, compareChecksums, MAX_PREFIXES, type Prefix, type PrefixFetch } from "./verify-compare";
import { carried, carryOf, diffOf, FIRST_PAGE, keyOf, nextSideToken, pendingOf, sideToken, splitAtFrontier, VerifyToken, walkOf, WALKS_DONE, type RunChecksum } from "./verify-page";

/** How far the digest of a run (by workflow id and run id; a prefix's event count too) got when a page stopped in it. */
const RunProgress = PagedDigestProgress.extend({ w: z.string(), r: z.string(), n: z.number().int().optional() });
type RunProgress = z.infer<typeof RunProgress>;

/** GetExecutionChecksums' token: the last run's workflow id and run id, and the next run's progress if a page stopped in it. */
const RUN_TOKEN = z.object({ w: z.string(), r: z.string(), p: RunProgress.optional() });

/** The token of an answer for prefixes: the last prefix answered (run and event count), and the next one's progress if the answer stopped in it. */
const PREFIX_TOKEN = RUN_TOKEN.extend({ n: z.number().int().nonnegative() });

type ChecksumRow = { w: string; r: string; n: string | number | null; event_count: number; taken: boolean; checksum: string | null };

export interface ReplicationVerifierDeps {
  db: Db;
  cluster: CurrentCluster;
  clients: RemoteClientPool;
  /** Runs with more bytes of attributes than this are digested a page of events at a time (default SQL_DIGEST_BYTES). */
  sqlDigestBytes?: number;
  /** How long a page of checksums digests large runs before it answers with what it has (default PAGE_WORK_MS). */
  pageWorkMs?: number;
}

type Page = Pick<GetExecutionChecksumsResponse, "executions" | "nextPageToken">;

/** Checksum pages are large: the walk over 1,000s of executions takes few round trips. */
const PAGE = 1000;

/**
 * How long a page of checksums works on runs digested a page of events at a time before it
 * answers with the runs done and a token carrying the digest of the unfinished one: a run of
 * several GB takes longer than any wait for one answer (1.1 GB took 50-130 s here).
 */
const PAGE_WORK_MS = 30_000;

/**
 * How long a peer's GetExecutionChecksums answer is waited for. A page of this build answers
 * within about PAGE_WORK_MS; a peer of an older build digests a page's runs whole, however
 * large (one run of 1.1 GB took 50 s, past the 60 s this was), so as long as the CLI waits.
 */
const CHECKSUMS_TIMEOUT_MS = 10 * 60_000;


/**
 * Checks that two clusters hold the same histories (DESIGN.md section 8): each cluster
 * serves a checksum per execution, closed runs included, and the cluster asked compares
 * its own with a remote's.
 */
export function createReplicationVerifier({ db, cluster, clients, sqlDigestBytes = SQL_DIGEST_BYTES, pageWorkMs = PAGE_WORK_MS }: ReplicationVerifierDeps) {
  /** AdminService.GetExecutionChecksums: one page, by (workflow id, run id); or the prefixes asked for. */
  async function checksums(req: Pick<GetExecutionChecksumsRequest, "namespace" | "pageSize" | "nextPageToken"> & { prefixes?: Prefix[] }, signal?: AbortSignal): Promise<GetExecutionChecksumsResponse> {
    if (!req.namespace) throw invalidArgument("namespace is required");
    const [ns] = await db.select({ id: namespaces.id }).from(namespaces).where(eq(namespaces.name, req.namespace));
    if (!ns) throw notFound(`namespace ${shown(req.namespace)} not found`);
    if (req.prefixes?.length) return prefixChecksums(ns.id, { ...req, prefixes: req.prefixes }, signal);
    const pageSize = Math.min(Math.max(req.pageSize || PAGE, 1), 5000);
    const after = req.nextPageToken.length ? decodeToken(req.nextPageToken, RUN_TOKEN) : undefined;
    const e = executions;
    const { out, more, stopped } = await checksumRows(ns.id, sql`
      select ${e.workflowId} as w, ${e.runId} as r, null::bigint as n, count(${h.eventId})::int as event_count, ${renderedBytesBound} as bytes
      from ${e} left join ${h} on ${h.namespaceId} = ${e.namespaceId} and ${h.workflowId} = ${e.workflowId} and ${h.runId} = ${e.runId}
      where ${e.namespaceId} = ${ns.id} ${after ? sql`and (${e.workflowId}, ${e.runId}) > (${after.w}, ${after.r})` : sql``}
      group by ${e.workflowId}, ${e.runId} order by ${e.workflowId}, ${e.runId} limit ${pageSize + 1}`, { size: pageSize, until: Date.now() + pageWorkMs, resume: after?.p, signal });
    const last = out.at(-1);
    // A run left unfinished: the token names the last run answered (where a server of an older
    // build, sharing this database, takes up from) and how far the unfinished one got.
    const done = last ? { w: last.workflowId, r: last.runId } : { w: after?.w ?? "", r: after?.r ?? "" };
    const token = stopped ? encodeToken({ ...done, p: stopped }) : more && last ? encodeToken(done) : new Uint8Array(0);
    return create(GetExecutionChecksumsResponseSchema, { executions: out, nextPageToken: token });
  }

  /**
   * The checksums of the runs asked for over their first eventCount events, as checksums()
   * renders them. Asked with a page size, bounded like a page (at most that many, digesting
   * large runs for pageWorkMs), in (workflow id, run id, event count) order, with a token to ask
   * the same prefixes again with: the prefix of a run of several GB takes longer than any wait
   * for one answer. Without one (callers from before), all of them, however long that takes.
   */
  async function prefixChecksums(namespaceId: string, req: { prefixes: Prefix[]; pageSize: number; nextPageToken: Uint8Array }, signal?: AbortSignal): Promise<GetExecutionChecksumsResponse> {
    if (req.prefixes.length > MAX_PREFIXES) throw invalidArgument(`at most ${MAX_PREFIXES} prefixes a call, not ${req.prefixes.length}`);
    const paged = req.pageSize > 0;
    const after = paged && req.nextPageToken.length ? decodeToken(req.nextPageToken, PREFIX_TOKEN) : undefined;
    const wanted = JSON.stringify(req.prefixes.map((p) => ({ w: p.workflowId, r: p.runId, n: Number(p.eventCount) })));
    const { out, more, stopped, last } = await checksumRows(namespaceId, sql`
      select wanted.w, wanted.r, wanted.n, count(${h.eventId})::int as event_count, ${renderedBytesBound} as bytes
      from jsonb_to_recordset(${wanted}::jsonb) as wanted(w text, r text, n bigint)
      join ${h} on ${h.namespaceId} = ${namespaceId} and ${h.workflowId} = wanted.w and ${h.runId} = wanted.r and ${h.eventId} <= wanted.n
      ${after ? sql`where (wanted.w, wanted.r, wanted.n) > (${after.w}, ${after.r}, ${after.n})` : sql``}
      group by wanted.w, wanted.r, wanted.n`, paged ? { size: Math.min(req.pageSize, MAX_PREFIXES), until: Date.now() + pageWorkMs, resume: after?.p, signal } : undefined);
    const done = last ?? { w: after?.w ?? "", r: after?.r ?? "", n: after?.n ?? 0 };
    const token = stopped ? encodeToken({ ...done, p: stopped }) : more ? encodeToken(done) : new Uint8Array(0);
    return create(GetExecutionChecksumsResponseSchema, { executions: out, nextPageToken: token });
  }

  /**
   * The checksums of the runs `runs` selects (w, r, n: the last event id counted or null,
   * event_count, bytes), in its order: in SQL for runs up to sqlDigestBytes of attributes,
   * here a page of events at a time for larger ones. For a page, the first `size` runs at
   * most, those digested in SQL up to about sqlDigestBytes in all, and past `until` no more
   * (`stopped`: how far the run left unfinished got; `more`: runs left out follow).
   */
  async function checksumRows(namespaceId: string, runs: SQL, page?: { size: number; until: number; resume?: RunProgress; signal?: AbortSignal | undefined }) {
    const rows = rowsOf(await db.execute(sql`
      select s.w, s.r, s.n, s.event_count, s.taken, case when s.taken then ${digestUnless(sql`s.bytes`, sqlDigestBytes, { namespaceId, workflowId: sql`s.w`, runId: sql`s.r` }, sql`coalesce(s.n, ${h.eventId})`)} end as checksum
      from (select q.*, ${page ? taken(page.size) : sql`true`} as taken from (${runs}) q) s order by s.w, s.r, s.n`)) as ChecksumRow[];
    const out: RunChecksum[] = [];
    /** The last row answered: its run and, for a prefix, event count. */
    let last: { w: string; r: string; n: number } | undefined;
    for (const row of rows) {
      if (!row.taken) return { out, more: true, last };
      const n = row.n === null ? undefined : Number(row.n);
      let checksum = row.checksum;
      if (checksum === null) {
        page?.signal?.throwIfAborted();
        const from = page?.resume?.w === row.w && page.resume.r === row.r && page.resume.n === n ? page.resume : undefined;
        const run = { namespaceId, workflowId: row.w, runId: row.r };
        const digest = await pagedDigest(db, run, { ...(n !== undefined && { upTo: n }), ...(from && { from }), ...(page && { until: page.until }) });
        if ("progress" in digest) return { out, more: true, last, stopped: { w: row.w, r: row.r, ...(n !== undefined && { n }), ...digest.progress } };
        checksum = digest.checksum;
      }
      out.push({ workflowId: row.w, runId: row.r, eventCount: BigInt(row.event_count), checksum });
      last = { w: row.w, r: row.r, n: n ?? 0 };
    }
    return { out, more: false, last };
  }

  /**
   * Whether a page takes a run: among its first `size`, and the runs before it digested in SQL
   * hold up to sqlDigestBytes (so one page's statement renders about that much at most).
   */
  function taken(size: number): SQL {
    const inSql = sql`case when q.bytes <= ${sqlDigestBytes} then q.bytes else 0 end`;
    return sql`(row_number() over (order by q.w, q.r, q.n) <= ${size}
      and coalesce(sum(${inSql}) over (order by q.w, q.r, q.n rows between unbounded preceding and 1 preceding), 0) <= ${sqlDigestBytes})`;
  }

  /** AdminService.VerifyReplication: this cluster's checksums against req.cluster's; a page of them when asked with a page size. */
  async function verify(req: VerifyReplicationRequest, signal?: AbortSignal): Promise<VerifyReplicationResponse> {
    if (!req.cluster) throw invalidArgument("cluster is required");
    if (req.cluster === cluster.clusterName) throw invalidArgument(`${shown(req.cluster)} is this cluster: name a remote cluster`);
    const [row] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.clusterName, req.cluster));
    if (!row) {
      const remotes = await db.select({ name: clusterMetadata.clusterName }).from(clusterMetadata).where(eq(clusterMetadata.isCurrent, false)).orderBy(clusterMetadata.clusterName);
      const known = remotes.length ? `its remote clusters: ${remotes.map((r) => r.name).join(", ")}` : "it has no remote cluster";
      throw notFound(`cluster ${shown(req.cluster)} is not a remote cluster of ${cluster.clusterName} (${known})`);
    }
    const admin = clients.get(row.rpcAddress).admin;
    const peer: Peer = {
      page: (token, walk) => admin.getExecutionChecksums({ namespace: req.namespace, pageSize: pageOf(req), nextPageToken: token }, { signal: walk, timeoutMs: CHECKSUMS_TIMEOUT_MS }).catch((e) => {
        // The remote's NOT_FOUND is of its copy: say whose it is.
        if (e instanceof ConnectError && e.code === Code.NotFound) throw notFound(`namespace ${req.namespace} is not on cluster ${req.cluster} (is it one of the namespace's clusters?): ${e.rawMessage}`);
        throw peerUnreachable(e, req.cluster);
      }),
      // A remote from before paged prefixes answers them all at once; one from before prefixes, a page of the namespace instead.
      prefixes: (chunk, token) => admin.getExecutionChecksums({ namespace: req.namespace, pageSize: MAX_PREFIXES, nextPageToken: token, prefixes: chunk }, { signal, timeoutMs: CHECKSUMS_TIMEOUT_MS }).catch((e) => {
        throw peerUnreachable(e, req.cluster);
      }),
    };
    const prefixes = {
      local: (chunk: Prefix[], token: Uint8Array) => checksums({ namespace: req.namespace, pageSize: MAX_PREFIXES, nextPageToken: token, prefixes: chunk }, signal),
      remote: peer.prefixes,
    };
    const t = req.pageSize > 0 && req.nextPageToken.length ? decodeToken(req.nextPageToken, VerifyToken) : FIRST_PAGE;
    // The page before left runs undecided (behind or diverging): this page decides more of them, and walks no further.
    const undecidedOnly = t.b && { local: new Map<string, RunChecksum>(), theirs: new Map<string, RunChecksum>(), walk: walkOf(t) };
    const { local, theirs, walk } = undecidedOnly || (req.pageSize > 0 ? await comparedPage(req, t, peer, signal) : await wholeWalks(req, peer, signal));
    const compared = compareChecksums(local, theirs);
    const { behind, diverging, pending } = t.b
      ? await behindOf(t.b.d.map(diffOf), prefixes, { until: Date.now() + pageWorkMs, resume: { local: { token: sideToken(t.b.l), first: t.b.ln }, remote: { token: sideToken(t.b.r), first: t.b.rn } } })
      : await behindOf(compared.diverging, prefixes, { until: req.pageSize > 0 ? Date.now() + pageWorkMs : Infinity });
    const next = walk || pending ? { ...(walk ?? WALKS_DONE), b: pending && pendingOf(pending) } : undefined;
    return create(VerifyReplicationResponseSchema, {
      clusterName: cluster.clusterName,
      remoteCluster: req.cluster,
      localExecutions: BigInt(local.size),
      remoteExecutions: BigInt(theirs.size),
      missing: compared.missing,
      extra: compared.extra,
      diverging,
      behind,
      nextPageToken: next ? encodeToken(next) : new Uint8Array(0),
      paged: req.pageSize > 0,
    });
  }

  /** Both sides' walks through the whole namespace (a caller from before pages). */
  async function wholeWalks(req: VerifyReplicationRequest, peer: Peer, signal?: AbortSignal) {
    const [local, theirs] = await bothOrNeither(signal, (walk) => [
      collect((token) => checksums({ namespace: req.namespace, pageSize: PAGE, nextPageToken: token }, walk), walk),
      collect((token) => peer.page(token, walk), walk),
    ]);
    return { local, theirs, walk: undefined };
  }

  /**
   * One page of the comparison: the next page of each side whose walk is not ahead, and of the
   * runs both sides have given, those up to the frontier both walks have passed (the rest wait
   * in the token). Each call's work is that of one page a side, so a namespace of any size is
   * verified page after page, each within its deadline.
   */
  async function comparedPage(req: VerifyReplicationRequest, t: VerifyToken, peer: Peer, signal?: AbortSignal) {
    const [mine, theirs] = await bothOrNeither(signal, (walk) => [
      t.l !== null && t.c?.side !== "local" ? checksums({ namespace: req.namespace, pageSize: pageOf(req), nextPageToken: sideToken(t.l) }, walk) : Promise.resolve(undefined),
      t.r !== null && t.c?.side !== "remote" ? peer.page(sideToken(t.r), walk) : Promise.resolve(undefined),
    ]);
    const next = { l: mine ? nextSideToken(mine.nextPageToken) : t.l, r: theirs ? nextSideToken(theirs.nextPageToken) : t.r };
    const local = { runs: [...carried(t, "local"), ...(mine?.executions ?? [])], done: next.l === null };
    const remote = { runs: [...carried(t, "remote"), ...(theirs?.executions ?? [])], done: next.r === null };
    const previous = t.f && { workflowId: t.f[0], runId: t.f[1] };
    const rank = await ranks([...local.runs, ...remote.runs, ...(previous ? [previous] : [])]);
    const split = splitAtFrontier((x) => rank.get(keyOf(x))!, previous, local, remote);
    const token: VerifyToken = { ...next, ...(split.frontier && { f: [split.frontier.workflowId, split.frontier.runId] }), c: carryOf(split.carry) };
    return { local: byKey(split.local), theirs: byKey(split.remote), walk: split.done ? undefined : token };
  }

  /** Each run's place in this database's order of (workflow id, run id), the order of each side's pages. */
  async function ranks(runs: { workflowId: string; runId: string }[]): Promise<Map<string, number>> {
    const keys = JSON.stringify(runs.map((x) => ({ w: x.workflowId, r: x.runId })));
    const rows = rowsOf(await db.execute(sql`select distinct k.w, k.r from jsonb_to_recordset(${keys}::jsonb) as k(w text, r text) order by k.w, k.r`)) as { w: string; r: string }[];
    return new Map(rows.map((k, i) => [keyOf({ workflowId: k.w, runId: k.r }), i]));
  }

  return { checksums, verify };
}

export type ReplicationVerifier = ReturnType<typeof createReplicationVerifier>;

/** The remote's answers: a page of checksums, or prefixes. */
interface Peer {
  page(token: Uint8Array, walk: AbortSignal): Promise<Page>;
  prefixes: PrefixFetch;
}

/** Runs of checksums per page a verify asks each side for. */
const pageOf = (req: VerifyReplicationRequest) => (req.pageSize > 0 ? Math.min(req.pageSize, 5000) : PAGE);

const byKey = (runs: RunChecksum[]) => new Map(runs.map((x) => [keyOf(x), x]));

/** Every page's checksums, by "workflowId/runId"; no page more once signal aborts. */
async function collect(fetchPage: (token: Uint8Array) => Promise<Page>, signal?: AbortSignal): Promise<Map<string, RunChecksum>> {
  const all = new Map<string, RunChecksum>();
  let token = new Uint8Array(0);
  do {
    signal?.throwIfAborted();
    const page = await fetchPage(token);
    for (const x of page.executions) all.set(keyOf(x), x);
    token = new Uint8Array(page.nextPageToken);
  } while (token.length);
  return all;
}

/**
 * Both walks' results; or, once one fails or signal aborts, the other stopped too (the signal
 * start gives them aborts) and waited for, then the first failure. This cluster's own walk went
 * on through every page of the namespace after a peer's failure had been answered.
 */
async function bothOrNeither<A, B>(signal: AbortSignal | undefined, start: (walk: AbortSignal) => [Promise<A>, Promise<B>]): Promise<[A, B]> {
  const failed = new AbortController();
  let first: { error: unknown } | undefined;
  const stopOthers = (error: unknown): never => {
    first ??= { error };
    failed.abort();
    throw error;
  };
  const [a, b] = start(signal ? AbortSignal.any([signal, failed.signal]) : failed.signal).map((p) => p.catch(stopOthers)) as [Promise<A>, Promise<B>];
  const [ra, rb] = await Promise.allSettled([a, b]);
  if (first) throw first.error;
  return [(ra as PromiseFulfilledResult<A>).value, (rb as PromiseFulfilledResult<B>).value];
}

