import { z } from "zod";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { and, asc, eq, sql } from "drizzle-orm";
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
import { clusterMetadata, executions, historyEvents, namespaces } from "../src/persistence/schema";
import { shown } from "../src/shown";

/** GetExecutionChecksums' token: the last run's workflow id and run id. */
const RUN_TOKEN = z.object({ w: z.string(), r: z.string() });

export interface ReplicationVerifierDeps {
  db: Db;
  cluster: CurrentCluster;
  clients: RemoteClientPool;
}

type Page = Pick<GetExecutionChecksumsResponse, "executions" | "nextPageToken">;
type Diff = Omit<ExecutionDifference, "$typeName">;

/** Checksum pages are large: the walk over 1,000s of executions takes few round trips. */
const PAGE = 1000;

/**
 * Checks that two clusters hold the same histories (DESIGN.md section 8): each cluster
 * serves a checksum per execution, closed runs included, and the cluster asked compares
 * its own with a remote's.
 */
export function createReplicationVerifier({ db, cluster, clients }: ReplicationVerifierDeps) {
  /** AdminService.GetExecutionChecksums: one page, by (workflow id, run id). */
  async function checksums(req: Pick<GetExecutionChecksumsRequest, "namespace" | "pageSize" | "nextPageToken">): Promise<GetExecutionChecksumsResponse> {
    if (!req.namespace) throw invalidArgument("namespace is required");
    const [ns] = await db.select({ id: namespaces.id }).from(namespaces).where(eq(namespaces.name, req.namespace));
    if (!ns) throw notFound(`namespace ${shown(req.namespace)} not found`);
    const pageSize = Math.min(Math.max(req.pageSize || PAGE, 1), 5000);
    const after = req.nextPageToken.length ? decodeToken(req.nextPageToken, RUN_TOKEN) : undefined;
    const e = executions;
    const h = historyEvents;
    // jsonb renders canonically (sorted keys, fixed spacing), so equal attributes give equal text on both clusters.
    const digestOf = sql<string>`md5(coalesce(string_agg(${h.eventId}::text || ':' || ${h.version}::text || ':' || ${h.eventType} || ':' || ${h.attributes}::text, '|' order by ${h.eventId}), ''))`;
    const rows = await db
      .select({ workflowId: e.workflowId, runId: e.runId, eventCount: sql<number>`count(${h.eventId})`.mapWith(Number), checksum: digestOf })
      .from(e)
      .leftJoin(h, and(eq(h.namespaceId, e.namespaceId), eq(h.workflowId, e.workflowId), eq(h.runId, e.runId)))
      .where(and(eq(e.namespaceId, ns.id), after ? sql`(${e.workflowId}, ${e.runId}) > (${after.w}, ${after.r})` : undefined))
      .groupBy(e.workflowId, e.runId)
      .orderBy(asc(e.workflowId), asc(e.runId))
      .limit(pageSize + 1);
    const page = rows.slice(0, pageSize);
    const last = page.at(-1);
    return create(GetExecutionChecksumsResponseSchema, {
      executions: page.map((r) => ({ workflowId: r.workflowId, runId: r.runId, eventCount: BigInt(r.eventCount), checksum: r.checksum })),
      nextPageToken: rows.length > pageSize && last ? encodeToken({ w: last.workflowId, r: last.runId }) : new Uint8Array(0),
    });
  }

  /** AdminService.VerifyReplication: this cluster's checksums against req.cluster's. */
  async function verify(req: VerifyReplicationRequest, signal?: AbortSignal): Promise<VerifyReplicationResponse> {
    if (!req.cluster) throw invalidArgument("cluster is required");
    if (req.cluster === cluster.clusterName) throw invalidArgument(`${shown(req.cluster)} is this cluster: name a remote cluster`);
    const [row] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.clusterName, req.cluster));
    if (!row) throw notFound(`cluster ${shown(req.cluster)} is not a remote cluster of ${cluster.clusterName}`);
    const remote = clients.get(row.rpcAddress).admin;
    const [local, theirs] = await Promise.all([
      collect((token) => checksums({ namespace: req.namespace, pageSize: PAGE, nextPageToken: token })),
      collect((token) => remote.getExecutionChecksums({ namespace: req.namespace, pageSize: PAGE, nextPageToken: token }, { signal, timeoutMs: 60_000 })).catch((e) => {
        // The remote's NOT_FOUND is of its copy: say whose it is.
        if (e instanceof ConnectError && e.code === Code.NotFound) throw notFound(`namespace ${req.namespace} is not on cluster ${req.cluster} (is it one of the namespace's clusters?): ${e.rawMessage}`);
        throw peerUnreachable(e, req.cluster);
      }),
    ]);
    return create(VerifyReplicationResponseSchema, {
      clusterName: cluster.clusterName,
      remoteCluster: req.cluster,
      localExecutions: BigInt(local.size),
      remoteExecutions: BigInt(theirs.size),
      ...compareChecksums(local, theirs),
    });
  }

  return { checksums, verify };
}

export type ReplicationVerifier = ReturnType<typeof createReplicationVerifier>;

/** Every page's checksums, by "workflowId/runId". */
async function collect(fetchPage: (token: Uint8Array) => Promise<Page>): Promise<Map<string, ExecutionChecksum>> {
  const all = new Map<string, ExecutionChecksum>();
  let token = new Uint8Array(0);
  do {
    const page = await fetchPage(token);
    for (const x of page.executions) all.set(`${x.workflowId}\u0000${x.runId}`, x);
    token = new Uint8Array(page.nextPageToken);
  } while (token.length);
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
