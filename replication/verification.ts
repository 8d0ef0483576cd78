import { z } from "zod";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { eq, sql, type SQL } from "drizzle-orm";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import { peerUnreachable, type RemoteClientPool } from "../src/cluster/remote-client";
import { invalidArgument, notFound } from "../src/errors";
import {
  ExecutionChecksumSchema,
  GetExecutionChecksumsResponseSchema,
  VerifyReplicationResponseSchema,
  type ExecutionChecksum,
  type ExecutionDifference,
  type GetExecutionChecksumsRequest,
  type GetExecutionChecksumsResponse,
  type VerifyReplicationRequest,
  type VerifyReplicationResponse,
} from "../src/gen/tern/admin/v1/service_pb";
import type { Db } from "../src/persistence/database";
import { decodeToken, encodeToken } from "../src/persistence/page-token";
import { rowsOf } from "../src/persistence/migrate";
import { clusterMetadata, executions, historyEvents as h, namespaces } from "../src/persistence/schema";
import { shown } from "../src/shown";
import { digestUnless, pagedDigest, PagedDigestProgress, renderedBytesBound, SQL_DIGEST_BYTES } from "./run-digest";

/** How far the digest of a run (by workflow id and run id) got when a page stopped in it. */
const RunProgress = PagedDigestProgress.extend({ w: z.string(), r: z.string() });
type RunProgress = z.infer<typeof RunProgress>;

/** GetExecutionChecksums' token: the last run's workflow id and run id, and the next run's progress if a page stopped in it. */
const RUN_TOKEN = z.object({ w: z.string(), r: z.string(), p: RunProgress.optional() });

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
type Diff = Omit<ExecutionDifference, "$typeName">;
/** A run and how many of its first events a prefix checksum covers. */
type Prefix = Pick<ExecutionChecksum, "workflowId" | "runId" | "eventCount">;

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

/** Most runs one GetExecutionChecksums call takes prefixes of. */
const MAX_PREFIXES = 1000;

const keyOf = (x: { workflowId: string; runId: string }) => `${x.workflowId}\u0000${x.runId}`;

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
    if (req.prefixes?.length) return prefixChecksums(ns.id, req.prefixes);
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

  /** The checksums of the runs asked for over their first eventCount events, as checksums() renders them. */
  async function prefixChecksums(namespaceId: string, prefixes: Prefix[]): Promise<GetExecutionChecksumsResponse> {
    if (prefixes.length > MAX_PREFIXES) throw invalidArgument(`at most ${MAX_PREFIXES} prefixes a call, not ${prefixes.length}`);
    const wanted = JSON.stringify(prefixes.map((p) => ({ w: p.workflowId, r: p.runId, n: Number(p.eventCount) })));
    const { out } = await checksumRows(namespaceId, sql`
      select wanted.w, wanted.r, wanted.n, count(${h.eventId})::int as event_count, ${renderedBytesBound} as bytes
      from jsonb_to_recordset(${wanted}::jsonb) as wanted(w text, r text, n bigint)
      join ${h} on ${h.namespaceId} = ${namespaceId} and ${h.workflowId} = wanted.w and ${h.runId} = wanted.r and ${h.eventId} <= wanted.n
      group by wanted.w, wanted.r, wanted.n`);
    return create(GetExecutionChecksumsResponseSchema, { executions: out });
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
      from (select q.*, ${page ? taken(page.size) : sql`true`} as taken from (${runs}) q) s order by s.w, s.r`)) as ChecksumRow[];
    const out: { workflowId: string; runId: string; eventCount: bigint; checksum: string }[] = [];
    for (const row of rows) {
      if (!row.taken) return { out, more: true };
      let checksum = row.checksum;
      if (checksum === null) {
        page?.signal?.throwIfAborted();
        const from = page?.resume?.w === row.w && page.resume.r === row.r ? page.resume : undefined;
        const run = { namespaceId, workflowId: row.w, runId: row.r };
        const digest = await pagedDigest(db, run, { ...(row.n !== null && { upTo: Number(row.n) }), ...(from && { from }), ...(page && { until: page.until }) });
        if ("progress" in digest) return { out, more: true, stopped: { w: row.w, r: row.r, ...digest.progress } };
        checksum = digest.checksum;
      }
      out.push({ workflowId: row.w, runId: row.r, eventCount: BigInt(row.event_count), checksum });
    }
    return { out, more: false };
  }

  /**
   * Whether a page takes a run: among its first `size`, and the runs before it digested in SQL
   * hold up to sqlDigestBytes (so one page's statement renders about that much at most).
   */
  function taken(size: number): SQL {
    const inSql = sql`case when q.bytes <= ${sqlDigestBytes} then q.bytes else 0 end`;
    return sql`(row_number() over (order by q.w, q.r) <= ${size}
      and coalesce(sum(${inSql}) over (order by q.w, q.r rows between unbounded preceding and 1 preceding), 0) <= ${sqlDigestBytes})`;
  }

  /** AdminService.VerifyReplication: this cluster's checksums against req.cluster's. */
  async function verify(req: VerifyReplicationRequest, signal?: AbortSignal): Promise<VerifyReplicationResponse> {
    if (!req.cluster) throw invalidArgument("cluster is required");
    if (req.cluster === cluster.clusterName) throw invalidArgument(`${shown(req.cluster)} is this cluster: name a remote cluster`);
    const [row] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.clusterName, req.cluster));
    if (!row) throw notFound(`cluster ${shown(req.cluster)} is not a remote cluster of ${cluster.clusterName}`);
    const remote = clients.get(row.rpcAddress).admin;
    const [local, theirs] = await bothOrNeither(signal, (walk) => [
      collect((token) => checksums({ namespace: req.namespace, pageSize: PAGE, nextPageToken: token }, walk), walk),
      collect((token) => remote.getExecutionChecksums({ namespace: req.namespace, pageSize: PAGE, nextPageToken: token }, { signal: walk, timeoutMs: CHECKSUMS_TIMEOUT_MS }), walk).catch((e) => {
        // The remote's NOT_FOUND is of its copy: say whose it is.
        if (e instanceof ConnectError && e.code === Code.NotFound) throw notFound(`namespace ${req.namespace} is not on cluster ${req.cluster} (is it one of the namespace's clusters?): ${e.rawMessage}`);
        throw peerUnreachable(e, req.cluster);
      }),
    ]);
    const { missing, extra, diverging } = compareChecksums(local, theirs);
    const behind = await behindOf(diverging, {
      local: (chunk) => checksums({ namespace: req.namespace, pageSize: 0, nextPageToken: new Uint8Array(0), prefixes: chunk }),
      // A remote from before prefixes answers a page instead: its entries match none asked for.
      remote: (chunk) => remote.getExecutionChecksums({ namespace: req.namespace, prefixes: chunk }, { signal, timeoutMs: CHECKSUMS_TIMEOUT_MS }).catch((e) => {
        throw peerUnreachable(e, req.cluster);
      }),
    });
    return create(VerifyReplicationResponseSchema, {
      clusterName: cluster.clusterName,
      remoteCluster: req.cluster,
      localExecutions: BigInt(local.size),
      remoteExecutions: BigInt(theirs.size),
      missing,
      extra,
      diverging: diverging.filter((d) => !behind.includes(d)),
      behind,
    });
  }

  return { checksums, verify };
}

export type ReplicationVerifier = ReturnType<typeof createReplicationVerifier>;

/** Every page's checksums, by "workflowId/runId"; no page more once signal aborts. */
async function collect(fetchPage: (token: Uint8Array) => Promise<Page>, signal?: AbortSignal): Promise<Map<string, ExecutionChecksum>> {
  const all = new Map<string, ExecutionChecksum>();
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

type PrefixFetch = (chunk: Prefix[]) => Promise<Pick<GetExecutionChecksumsResponse, "executions">>;

/**
 * The diverging runs whose shorter history is the start of the longer one: the longer side's
 * checksum over the shorter side's event count (asked of that side) equals the shorter's.
 */
async function behindOf(diverging: Diff[], fetchFrom: { local: PrefixFetch; remote: PrefixFetch }): Promise<Diff[]> {
  const shorterOf = (d: Diff) => (d.local!.eventCount < d.remote!.eventCount ? "local" : "remote");
  const askOf = (longer: "local" | "remote") =>
    diverging.filter((d) => d.local!.eventCount !== d.remote!.eventCount && shorterOf(d) !== longer)
      .map((d): Prefix => ({ workflowId: d.workflowId, runId: d.runId, eventCount: d[shorterOf(d)]!.eventCount }));
  const [ofLocal, ofRemote] = await Promise.all([inChunks(askOf("local"), fetchFrom.local), inChunks(askOf("remote"), fetchFrom.remote)]);
  return diverging.filter((d) => {
    if (d.local!.eventCount === d.remote!.eventCount) return false;
    const shorter = d[shorterOf(d)]!;
    const prefix = (shorterOf(d) === "remote" ? ofLocal : ofRemote).get(keyOf(d));
    return prefix !== undefined && prefix.eventCount === shorter.eventCount && prefix.checksum === shorter.checksum;
  });
}

/** The prefix checksums of runs, MAX_PREFIXES a call, by "workflowId/runId". */
async function inChunks(runs: Prefix[], fetch: PrefixFetch): Promise<Map<string, ExecutionChecksum>> {
  const all = new Map<string, ExecutionChecksum>();
  for (let i = 0; i < runs.length; i += MAX_PREFIXES) {
    for (const x of (await fetch(runs.slice(i, i + MAX_PREFIXES))).executions) all.set(keyOf(x), x);
  }
  return all;
}

/** Missing (local only), extra (remote only) and diverging executions. */
export function compareChecksums(local: Map<string, ExecutionChecksum>, remote: Map<string, ExecutionChecksum>) {
  const missing: Diff[] = [];
  const extra: Diff[] = [];
  const diverging: Diff[] = [];
  const diff = (x: ExecutionChecksum, l?: ExecutionChecksum, r?: ExecutionChecksum): Diff => ({
    workflowId: x.workflowId, runId: x.runId, local: l && create(ExecutionChecksumSchema, l), remote: r && create(ExecutionChecksumSchema, r),
  });
  for (const [k, l] of local) {
    const r = remote.get(k);
    if (!r) missing.push(diff(l, l));
    else if (r.eventCount !== l.eventCount || r.checksum !== l.checksum) diverging.push(diff(l, l, r));
  }
  for (const [k, r] of remote) if (!local.has(k)) extra.push(diff(r, undefined, r));
  return { missing, extra, diverging };
}
