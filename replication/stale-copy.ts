import { Code, ConnectError } from "@connectrpc/connect";
import { remoteOf, type ClusterDirectory } from "../src/cluster/directory";
import { peerFailureText, type RemoteClientPool } from "../src/cluster/remote-client";
import type { NamespaceRecord } from "../src/namespace/registry";
import { notServed } from "./not-served";

/**
 * Whether the active cluster a passive copy names still holds the copy's namespace id, or why that is not known; behind: another
 * member says the copy missed a failover; unasked: it no longer does, but the members named could not be asked whether they do.
 * gone: it no longer does, nor does any member asked at a later failover version; it names the members not connected here,
 * which no one asked (a mesh without their link here), for the delete's answer to say.
 */
export type ActiveHolds = "holds" | { gone: string[] } | { unknown: string } | { behind: string } | { unasked: Unasked[] };

/** A member that could not be asked: its name, the address it is known at here, and why. */
export interface Unasked {
  cluster: string;
  address: string;
  why: string;
}

export interface StaleCopyCheckDeps {
  clusters: ClusterDirectory;
  clients: RemoteClientPool;
  /** Longest wait for the active cluster's answer. */
  timeoutMs?: number;
}

/**
 * The namespace ref names as the cluster at address holds it: its id (undefined if the answer
 * names none), or "not found" where it answers NOT_FOUND of its own (not a proxy's or an older
 * build's not-served answer). Rejects as the call does otherwise.
 */
export async function namespaceOn(clients: RemoteClientPool, address: string, ref: { id?: string; namespace?: string }, timeoutMs: number): Promise<{ id?: string; failoverVersion?: bigint; active?: string } | "not found"> {
  try {
    const ns = (await clients.get(address).workflow.describeNamespace(ref, { timeoutMs })).namespace;
    return { id: ns?.namespaceInfo?.id, failoverVersion: ns?.failoverVersion, active: ns?.replicationConfig?.activeClusterName };
  } catch (e) {
    if (e instanceof ConnectError && e.code === Code.NotFound && !notServed(e)) return "not found";
    throw e;
  }
}

/**
 * Asks the active cluster a copy here names whether it still holds that namespace id: a copy of a
 * namespace deleted there stays here (a delete is local) and may hold the create of one registered
 * again under its name (namespace-held.ts). Only gone lets a passive member delete its copy.
 */
export function createStaleCopyCheck({ clusters, clients, timeoutMs = 5_000 }: StaleCopyCheckDeps) {
  /**
   * A copy that missed a failover names an active cluster that may have left the namespace since
   * and deleted its copy: another member holding the id at a later failover version says so. A
   * member that cannot be asked may be that one: the answer is then unknown, unless an operator
   * disabled the connection to it (one gone for good would otherwise block the delete for good).
   * A member not connected here has no address to ask at, and no connection to disable: passed
   * over as a disabled one, and named in the answer (before, passed over unsaid).
   */
  async function newerElsewhere(ns: NamespaceRecord): Promise<{ behind: string } | { unasked: Unasked[] } | { gone: string[] }> {
    const known = await clusters.list();
    const others = known.filter((c) => !c.isCurrent && c.clusterName !== ns.activeClusterName && ns.clusters.includes(c.clusterName));
    const notConnected = ns.clusters.filter((name) => name !== ns.activeClusterName && !known.some((c) => c.clusterName === name));
    const answers = await Promise.all(others.map((c) => namespaceOn(clients, c.rpcAddress, { id: ns.id }, timeoutMs).catch((e) => ({ failed: peerFailureText(e) }))));
    const unasked: Unasked[] = [];
    for (const [i, there] of answers.entries()) {
      const member = others[i]!;
      if (there !== "not found" && "failed" in there) {
        if (member.enableConnection) unasked.push({ cluster: member.clusterName, address: member.rpcAddress, why: there.failed });
        continue;
      }
      if (there === "not found" || there.id !== ns.id || (there.failoverVersion ?? 0n) <= BigInt(ns.failoverVersion)) continue;
      return {
        behind: `cluster ${member.clusterName} holds it (id ${ns.id}) at a later failover version (${there.failoverVersion}, active in ${there.active}) ` +
          `than this copy's (${ns.failoverVersion}): this copy is behind, not stale`,
      };
    }
    return unasked.length ? { unasked } : { gone: notConnected };
  }

  return async (ns: NamespaceRecord): Promise<ActiveHolds> => {
    const remote = await remoteOf(clusters, ns.activeClusterName);
    if (!remote) return { unknown: `cluster ${ns.activeClusterName} is not connected here` };
    try {
      const there = await namespaceOn(clients, remote.rpcAddress, { id: ns.id }, timeoutMs);
      if (there === "not found") return newerElsewhere(ns);
      return there.id === ns.id ? "holds" : { unknown: `cluster ${ns.activeClusterName} answered with another namespace` };
    } catch (e) {
      return { unknown: peerFailureText(e) };
    }
  };
}
