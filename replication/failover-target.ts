import { Code, ConnectError } from "@connectrpc/connect";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import type { ClusterDirectory } from "../src/cluster/directory";
import type { RemoteClientPool } from "../src/cluster/remote-client";
import { notServed } from "./not-served";

export interface FailoverTargetCheckDeps {
  clusters: ClusterDirectory;
  clients: RemoteClientPool;
  /** Longest wait for the target's answer; past it the failover goes on as if it had none. */
  timeoutMs?: number;
}

/**
 * Why a graceful failover's target can never catch up with this cluster, as the target itself
 * says (its side of the connection disabled, or this cluster unknown there or known with another
 * id: it pulls nothing from here), or undefined: it can, or it did not answer (a target that is
 * down may come back within the failover's timeout). Asked before HANDOVER, so a failover that
 * could only time out holds no write for its timeout.
 */
export function createFailoverTargetCheck({ clusters, clients, timeoutMs = 2_000 }: FailoverTargetCheckDeps) {
  const current: CurrentCluster = clusters.current();
  return async function targetProblem(target: string): Promise<string | undefined> {
    const row = (await clusters.list()).find((c) => c.clusterName === target && !c.isCurrent);
    if (!row) return undefined;
    const here = current.clusterName;
    try {
      const { cluster } = await clients.get(row.rpcAddress).operator.describeCluster({ clusterName: here }, { timeoutMs });
      if (!cluster) return undefined;
      if (cluster.clusterId && cluster.clusterId !== current.clusterId) {
        return `cluster ${target} knows another ${here} (id ${cluster.clusterId}; this one is ${current.clusterId}): connect this one there with cluster upsert`;
      }
      if (!cluster.enableConnection) return `replication with cluster ${here} is disabled on ${target} (enable_connection is false there)`;
      return undefined;
    } catch (e) {
      if (e instanceof ConnectError && e.code === Code.NotFound && !notServed(e)) return `cluster ${target} does not know cluster ${here}: connect it there with cluster upsert`;
      return undefined;
    }
  };
}
