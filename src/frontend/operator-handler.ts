import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { CurrentCluster } from "../cluster/bootstrap";
import type { ClusterDirectory } from "../cluster/directory";
import { OperatorService, ClusterInfoSchema, type ClusterInfo } from "../gen/tern/operator/v1/service_pb";
import { deleteNamespace } from "../namespace/delete";
import type { NamespaceRecord, NamespaceRegistry } from "../namespace/registry";
import type { Db } from "../persistence/database";
import type { clusterMetadata } from "../persistence/schema";
import { decodeToken, encodeToken, NAME_TOKEN } from "../persistence/page-token";
import type { RemoteClusters } from "../cluster/remote-clusters";
import { clampPage } from "../namespace/registry";
import type { GracefulFailover } from "../../replication/failover";
import type { RemoteClientPool } from "../cluster/remote-client";
import { durationMs, namespaceToProto } from "./convert";
import { callActive, FORWARD_TIMEOUT_MS, FORWARDED_HEADER } from "./forwarding";

export interface OperatorHandlerDeps {
  db: Db;
  clusters: ClusterDirectory;
  namespaces: NamespaceRegistry;
  remotes: RemoteClusters;
  /** Live connection state of a remote cluster. */
  connectionState: (name: string) => string;
  version: string;
  /** Graceful failover (replication/failover.ts). */
  failover: GracefulFailover;
  /** Clients of remote frontends: a failover asked of a passive cluster goes to the active one. */
  clients: RemoteClientPool;
  /** FORWARD_TIMEOUT_MS unless set (tests). */
  forwardTimeoutMs?: number;
  /** Subscribes hook to namespaces becoming active in this cluster (server.ts activatedHooks); returns its unsubscribe. */
  whenActivated: (hook: (ns: NamespaceRecord) => void) => () => void;
}

const FAILOVER_TIMEOUT_MS = 10_000;
/** The longest a forwarded failover to this cluster waits for the switch to replicate here before it answers anyway. */
const SWITCH_HEARD_WAIT_MS = 5_000;
/** How often that wait reads the namespace again, for a switch another server on the same database applied. */
const SWITCH_RECHECK_MS = 1_000;

function clusterToProto(
  row: typeof clusterMetadata.$inferSelect,
  current: CurrentCluster,
  version: string,
  connectionState: (name: string) => string,
): ClusterInfo {
  const isCurrent = row.clusterName === current.clusterName;
  return create(ClusterInfoSchema, {
    clusterName: row.clusterName,
    clusterId: row.clusterId,
    rpcAddress: row.rpcAddress,
    failoverVersionIncrement: BigInt(row.failoverVersionIncrement),
    initialFailoverVersion: BigInt(row.initialFailoverVersion),
    historyShardCount: row.historyShardCount,
    isGlobalNamespaceEnabled: row.isGlobalNamespaceEnabled,
    isCurrentCluster: isCurrent,
    enableConnection: row.enableConnection,
    masterClusterName: isCurrent ? current.masterClusterName : "",
    serverVersion: isCurrent ? version : "",
    createTime: timestampFromDate(row.createdAt),
    connectionState: isCurrent ? "" : connectionState(row.clusterName),
  });
}

/** OperatorService: clusters and namespace deletion. */
export function createOperatorHandler(deps: OperatorHandlerDeps): ServiceImpl<typeof OperatorService> {
  const { db, clusters, namespaces, remotes, version, connectionState } = deps;
  const current = clusters.current();
  const toProto = (row: typeof clusterMetadata.$inferSelect) => clusterToProto(row, current, version, connectionState);

  /**
   * Waits until this cluster's namespace is at version or past it (active here), up to
   * SWITCH_HEARD_WAIT_MS or the call's end: woken as the switch makes it active here, not by
   * reading it every few ms. Servers sharing one PostgreSQL database: when another of them
   * applies the switch first, this one's receiver skips it and wakes nothing, so the namespace
   * is read again every SWITCH_RECHECK_MS too.
   */
  async function heardOfSwitch(name: string, version: number, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return;
    let done!: () => void;
    const heard = new Promise<void>((resolve) => (done = resolve));
    // Subscribed before the read: a switch applied between the two is heard, not waited out.
    const unsubscribe = deps.whenActivated((ns) => {
      if (ns.name === name && ns.failoverVersion >= version) done();
    });
    const timer = setTimeout(done, SWITCH_HEARD_WAIT_MS);
    const recheck = setInterval(() => {
      namespaces.describe({ name }).then((ns) => ns.failoverVersion >= version && done(), () => {});
    }, SWITCH_RECHECK_MS);
    signal.addEventListener("abort", done);
    try {
      if ((await namespaces.describe({ name })).failoverVersion >= version) return;
      await heard;
    } finally {
      unsubscribe();
      clearTimeout(timer);
      clearInterval(recheck);
      signal.removeEventListener("abort", done);
    }
  }

  return {
    async describeCluster(r) {
      const name = r.clusterName || current.clusterName;
      await clusters.require(name);
      const row = (await clusters.list()).find((c) => c.clusterName === name)!;
      return { cluster: toProto(row) };
    },
    async listClusters(r) {
      const size = clampPage(r.pageSize);
      const after = r.nextPageToken.length ? decodeToken(r.nextPageToken, NAME_TOKEN).name : "";
      const rows = (await clusters.list()).filter((c) => c.clusterName > after);
      const page = rows.slice(0, size);
      return {
        clusters: page.map((row) => toProto(row)),
        nextPageToken: rows.length > size ? encodeToken({ name: page.at(-1)!.clusterName }) : new Uint8Array(),
      };
    },
    async deleteNamespace(r, { signal }) {
      const { executions } = await deleteNamespace(db, namespaces, r.namespace, current.clusterName, signal);
      return { deletedNamespace: r.namespace, deletedExecutions: BigInt(executions) };
    },
    async addOrUpdateRemoteCluster(r, { signal }) {
      const row = await remotes.upsert(r.frontendAddress, r.enableRemoteClusterConnection ?? true, signal);
      return { cluster: toProto(row) };
    },
    async removeRemoteCluster(r, { signal }) {
      await remotes.remove(r.clusterName, signal);
      return {};
    },
    async failoverNamespace(r, ctx) {
      const ns = await namespaces.describe({ name: r.namespace });
      const timeoutMs = durationMs(r.timeout, "timeout", FAILOVER_TIMEOUT_MS);
      if (ns.isGlobal && ns.activeClusterName !== current.clusterName && !ctx.requestHeader.get(FORWARDED_HEADER)) {
        // The failover may take its timeout there, and leaving HANDOVER after it a few seconds more.
        const limitMs = timeoutMs + (deps.forwardTimeoutMs ?? FORWARD_TIMEOUT_MS);
        const to = { target: ns.activeClusterName, namespace: r.namespace, what: "FailoverNamespace", limitMs };
        const res = await callActive({ clusters, clients: deps.clients }, ctx, to, ({ operator }, options) => operator.failoverNamespace(r, options));
        // Asked here to fail over to here: answered once this cluster has the switch (namespace
        // replication brings it a few ms after the active answers), so a write sent here next is
        // taken here rather than refused as if the old active still were.
        if (r.targetCluster === current.clusterName) await heardOfSwitch(r.namespace, Number(res.namespace?.failoverVersion ?? 0), ctx.signal);
        return res;
      }
      const res = await deps.failover.run(r.namespace, r.targetCluster, timeoutMs, ctx.signal);
      const ids = [...res.handover.shards].map(([shard, id]) => [shard, BigInt(id)] as const);
      return { namespace: namespaceToProto(res.namespace), handoverTaskIds: Object.fromEntries(ids) };
    },
  };
}
