import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { CurrentCluster } from "../cluster/bootstrap";
import type { ClusterDirectory } from "../cluster/directory";
import { OperatorService, ClusterInfoSchema, type ClusterInfo, type FailoverNamespaceResponse } from "../gen/tern/operator/v1/service_pb";
import { TernError, failedPrecondition, loggableError } from "../errors";
import { MAX_TIMER_MS } from "../sleep";
import { deleteNamespace } from "../namespace/delete";
import type { NamespaceRecord, NamespaceRegistry } from "../namespace/registry";
import type { Db } from "../persistence/database";
import type { clusterMetadata } from "../persistence/schema";
import { decodeToken, encodeToken, NAME_TOKEN } from "../persistence/page-token";
import type { RemoteClusters } from "../cluster/remote-clusters";
import { clampPage } from "../namespace/registry";
import { SWITCH_HEARD_WAIT_MS, switchNotTaken, type GracefulFailover } from "../../replication/failover";
import type { RemoteClientPool } from "../cluster/remote-client";
import { createStaleCopyCheck } from "../../replication/stale-copy";
import { durationMs, namespaceToProto } from "./convert";
import { callActive, FORWARD_TIMEOUT_MS, FORWARDED_HEADER } from "./forwarding";
import { forwardedCallsMessage, type RedirectionOutcomes } from "./redirection-outcomes";

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
  /** Counts each forwarded failover by target, and logs those never answered. */
  redirections: RedirectionOutcomes;
  /** FORWARD_TIMEOUT_MS unless set (tests). */
  forwardTimeoutMs?: number;
  /** SWITCH_HEARD_WAIT_MS unless set (tests: a wait woken by the switch is told from one that ran out). */
  switchHeardWaitMs?: number;
  /** Subscribes hook to the namespace changes saved in this cluster (server.ts changedHooks); returns its unsubscribe. */
  whenChanged: (hook: (ns: NamespaceRecord) => void) => () => void;
  /**
   * Sets replication_dlq_size again after a namespace delete took its entries (replication/dlq.ts).
   * Never rejects: a read that fails is logged, and the gauge is right again at its next refresh.
   */
  refreshDlqGauge: () => Promise<void>;
  /** After a namespace delete here: held namespace replication tasks are tried again (namespace-receiver.ts retryHeld). */
  onNamespaceDeleted?: () => void;
}

const FAILOVER_TIMEOUT_MS = 10_000;
/** How often that wait reads the namespace again, for a switch another server on the same database applied. */
const SWITCH_RECHECK_MS = 1_000;

function clusterToProto(
  row: typeof clusterMetadata.$inferSelect,
  current: CurrentCluster,
  version: string,
  connectionState: (name: string) => string,
  redirections: RedirectionOutcomes,
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
    forwardedCalls: isCurrent ? undefined : forwardedCallsMessage(redirections.recent(row.clusterName)),
  });
}

/** OperatorService: clusters and namespace deletion. */
export function createOperatorHandler(deps: OperatorHandlerDeps): ServiceImpl<typeof OperatorService> {
  const { db, clusters, namespaces, remotes, version, connectionState } = deps;
  const current = clusters.current();
  const toProto = (row: typeof clusterMetadata.$inferSelect) => clusterToProto(row, current, version, connectionState, deps.redirections);
  const staleCopy = createStaleCopyCheck({ clusters, clients: deps.clients });

  /**
   * Waits until this cluster's namespace is past failover version past, up to waitMs or the
   * call's end, and returns it as seen then (undefined if not seen): woken as a change to it is
   * saved here (the switch, or a failover made elsewhere that reached it first), not by reading it every
   * few ms. Servers sharing one PostgreSQL database: when another of them applies the change
   * first, this one's receiver skips it and wakes nothing, so the namespace is read again every
   * SWITCH_RECHECK_MS too.
   */
  async function heardOfSwitch(name: string, past: number, waitMs: number, signal: AbortSignal): Promise<NamespaceRecord | undefined> {
    if (signal.aborted) return undefined;
    let done!: (ns?: NamespaceRecord) => void;
    const heard = new Promise<NamespaceRecord | undefined>((resolve) => (done = resolve));
    const reached = (ns: NamespaceRecord) => {
      if (ns.name === name && ns.failoverVersion > past) done(ns);
    };
    // Subscribed before the read: a change saved between the two is heard, not waited out.
    const unsubscribe = deps.whenChanged(reached);
    const timer = setTimeout(done, Math.min(waitMs, MAX_TIMER_MS));
    const recheck = setInterval(() => void namespaces.describe({ name }).then(reached, () => {}), SWITCH_RECHECK_MS);
    const aborted = () => done();
    signal.addEventListener("abort", aborted);
    try {
      const here = await namespaces.describe({ name });
      return here.failoverVersion > past ? here : await heard;
    } finally {
      unsubscribe();
      clearTimeout(timer);
      clearInterval(recheck);
      signal.removeEventListener("abort", aborted);
    }
  }

  /**
   * The answer to a failover asked here to fail over to here, forwarded to the active cluster,
   * which switched and left the switch's confirmation to this cluster (failover.ts targetWaits):
   * given once this cluster's copy says what became of it, so a write sent here next is taken
   * here rather than refused as if the old active still were, and with the answers the active
   * cluster gives when asked itself (confirmSwitch). Past the switch's from-version, this copy
   * has it (ok), or holds a failover made elsewhere that reached it first, below the switch (it
   * refuses the switch: namespace-applier.ts refusedSwitch) or above it (overtaken):
   * FAILED_PRECONDITION. Before, only the switch itself woke the wait: a refusal answered ok
   * after 5 s. Not past it within waitMs: ok, unconfirmed.
   */
  async function confirmedHere(name: string, res: FailoverNamespaceResponse, waitMs: number, signal: AbortSignal): Promise<FailoverNamespaceResponse> {
    const version = res.namespace?.failoverVersion ?? 0n;
    const made = res.namespace?.failoverHistory[0];
    const issuer = made?.fromCluster ?? "the active cluster";
    // From an active cluster that does not say the from-version: only the switch is past it.
    const from = made && made.forced === false && made.failoverVersion === version && made.fromFailoverVersion !== undefined ? made.fromFailoverVersion : version - 1n;
    const seen = await heardOfSwitch(name, Number(from), waitMs, signal).catch((e: unknown) => {
      if (e instanceof TernError) throw e;
      res.unconfirmed = `cannot tell whether ${current.clusterName} took it (${loggableError(e)})`;
      return undefined;
    });
    if (res.unconfirmed) return res;
    if (!seen) {
      res.unconfirmed = `${current.clusterName} has not heard of the switch from ${issuer} within ${waitMs} ms`;
      return res;
    }
    const there = { failoverVersion: BigInt(seen.failoverVersion), active: seen.activeClusterName };
    if (there.failoverVersion === version || (there.failoverVersion > version && seen.activeClusterName === current.clusterName)) return res;
    if (there.failoverVersion > version) {
      // Kept as it was said before the refusal was told apart (failover-races.test.ts).
      throw failedPrecondition(
        `graceful failover of namespace ${name} to ${current.clusterName} (version ${version}) was overtaken by a later failover to ` +
          `${seen.activeClusterName} (version ${seen.failoverVersion}) before ${current.clusterName} heard of it: ${name} is active in ${seen.activeClusterName}`,
      );
    }
    throw switchNotTaken(name, issuer, current.clusterName, version, there);
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
      const { executions, unasked } = await deleteNamespace(db, namespaces, r.namespace, current.clusterName, { signal, activeHolds: staleCopy });
      // The delete is made: a failed read of the gauge (a database blip) no longer answers it as failed.
      await deps.refreshDlqGauge();
      // The copy deleted may be what held a replicated namespace's create.
      deps.onNamespaceDeleted?.();
      return { deletedNamespace: r.namespace, deletedExecutions: BigInt(executions), unaskedClusters: unasked };
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
      const askedAt = Date.now();
      const ns = await namespaces.describe({ name: r.namespace });
      const timeoutMs = durationMs(r.timeout, "timeout", FAILOVER_TIMEOUT_MS);
      if (ns.isGlobal && ns.activeClusterName !== current.clusterName && !ctx.requestHeader.get(FORWARDED_HEADER)) {
        // The failover may take its timeout there, and leaving HANDOVER after it a few seconds more.
        const limitMs = timeoutMs + (deps.forwardTimeoutMs ?? FORWARD_TIMEOUT_MS);
        // A graceful failover needs the active cluster to hand over: one that is down never will.
        const whenUnanswered =
          `; if ${ns.activeClusterName} is down, no graceful failover can be made: fail over forced, asked of ${r.targetCluster} ` +
          `(tern operator namespace update -n ${r.namespace} --active-cluster ${r.targetCluster})`;
        const to = { target: ns.activeClusterName, namespace: r.namespace, what: "FailoverNamespace", limitMs, whenUnanswered };
        const res = await callActive({ clusters, clients: deps.clients, redirections: deps.redirections }, ctx, to, ({ operator }, options) => operator.failoverNamespace(r, options));
        if (r.targetCluster !== current.clusterName) return res;
        return confirmedHere(r.namespace, res, Math.max(askedAt + timeoutMs - Date.now(), deps.switchHeardWaitMs ?? SWITCH_HEARD_WAIT_MS), ctx.signal);
      }
      // Answered once the target has the switch; a target that forwarded the call waits for it itself (above).
      const res = await deps.failover.run(r.namespace, r.targetCluster, timeoutMs, ctx.signal, ctx.requestHeader.get(FORWARDED_HEADER) === r.targetCluster);
      const ids = [...res.handover.shards].map(([shard, id]) => [shard, BigInt(id)] as const);
      return { namespace: namespaceToProto(res.namespace), handoverTaskIds: Object.fromEntries(ids), unconfirmed: res.unconfirmed ?? "" };
    },
  };
}
