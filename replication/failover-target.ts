import { Code, ConnectError } from "@connectrpc/connect";
import type { CurrentCluster } from "../src/cluster/bootstrap";
import type { ClusterDirectory } from "../src/cluster/directory";
import type { RemoteClientPool } from "../src/cluster/remote-client";
import type { ClusterInfo } from "../src/gen/tern/operator/v1/service_pb";
import { fetchFailureReason } from "../src/fetch-failure";
import { notServed } from "./not-served";
import { unfinishedBackfill, type BackfillProgress } from "./backfill-jobs";
import { namespaceOn } from "./stale-copy";

/** The backfill jobs of namespace on the cluster at address, as it says; none when it does not answer within waitMs (or signal fired first). */
export function backfillJobsOn(clients: RemoteClientPool, address: string, namespace: string, waitMs: number, signal?: AbortSignal): Promise<BackfillProgress[]> {
  return clients.get(address).backfill.getBackfillStatus({ namespace }, { timeoutMs: waitMs, signal }).then((r) => r.jobs, () => []);
}

/** The namespace a graceful failover hands over, as this cluster holds it. */
export interface TargetNamespace {
  name: string;
  id: string;
  failoverVersion?: number;
}

/** The namespace as target holds it (asked by id), "not found", or undefined: no answer. */
type ById = Awaited<ReturnType<typeof namespaceOn>> | undefined;

/** Why a graceful failover to a target is refused, and what the operator can do instead. */
export interface TargetProblem {
  why: string;
  instead: string;
}

/** A problem the operator fixes, or goes around with a forced failover (undefined: none). */
export function fixOrForce(why: string | undefined): TargetProblem | undefined {
  return why === undefined ? undefined : { why, instead: "fix that first, or fail over forced" };
}

export interface FailoverTargetCheckDeps {
  clusters: ClusterDirectory;
  clients: RemoteClientPool;
  /** Longest wait for each answer (a quarter of the failover's timeout if less); past it the failover goes on as if it had none. */
  timeoutMs?: number;
}

/**
 * Why this cluster's copy of ns missed a failover target heard of (target holds it at a later
 * failover version), or undefined. Before, the switch went on from the stale copy: its version,
 * the next above this copy's, could top the one target held, and target's writes made active
 * elsewhere at that one lost to this cluster's branch (chaos.test.ts, seed 1 on PostgreSQL).
 */
function missedFailover(target: string, ns: TargetNamespace, there: ById): TargetProblem | undefined {
  const later = laterThere(ns, there);
  if (!later) return undefined;
  return {
    why: `cluster ${target} holds ${ns.name} at failover version ${later.failoverVersion} (active in ${later.active}), above ${ns.failoverVersion} here: this cluster missed a failover`,
    instead: `let this cluster hear of it first (it then names the active cluster), or fail over forced`,
  };
}

/** The namespace as target holds it, when at a failover version above ns's; otherwise undefined. */
function laterThere(ns: TargetNamespace, there: ById): { failoverVersion: bigint; active?: string } | undefined {
  if (!there || there === "not found" || ns.failoverVersion === undefined || there.failoverVersion === undefined) return undefined;
  return there.failoverVersion > BigInt(ns.failoverVersion) ? { failoverVersion: there.failoverVersion, active: there.active } : undefined;
}

/** How long each question to a target waits: timeoutMs, or a quarter of the failover's timeout if less. */
const waitFor = (timeoutMs: number, failoverTimeoutMs: number) => Math.max(1, Math.min(timeoutMs, Math.floor(failoverTimeoutMs / 4)));

/** What the target answered just before the switch: the later failover it holds the namespace at, or that it did not answer (why). */
export type TargetMovedOn = { failoverVersion: bigint; active?: string } | { unanswered: string };

/**
 * Asked again just before the switch: the failover version target holds ns at, when above the one
 * the handover began from (a failover made elsewhere, forced, reached target during the wait), or
 * undefined. Before, the check ran once before HANDOVER, and the switch, its version computed from
 * this cluster's copy, could top the forced one there: target took it, and writes acknowledged at
 * the forced one lost their branch. No answer in time is said (unanswered), not taken for "not
 * moved on": the failover then refuses (failover.ts refuseIfTargetMovedOn).
 */
export function createFailoverTargetRecheck({ clusters, clients, timeoutMs = 2_000 }: FailoverTargetCheckDeps) {
  const holds = createTargetHolds({ clusters, clients });
  return async function targetMovedOn(target: string, ns: TargetNamespace, failoverTimeoutMs = Infinity): Promise<TargetMovedOn | undefined> {
    const there = await holds(target, ns.id, waitFor(timeoutMs, failoverTimeoutMs));
    return there !== "not found" && there && "unanswered" in there ? there : laterThere(ns, there);
  };
}

/** The namespace as target holds it, or that it did not answer within waitMs (why); undefined when target is not connected here. */
export type TargetHolds = ById | { unanswered: string };

/** Asks target for the namespace of id (TargetHolds): before the switch (createFailoverTargetRecheck), and after it, whether it took it (failover.ts confirmSwitch). */
export function createTargetHolds({ clusters, clients }: Pick<FailoverTargetCheckDeps, "clusters" | "clients">) {
  return async function targetHolds(target: string, id: string, waitMs: number): Promise<TargetHolds> {
    const address = (await clusters.list()).find((c) => !c.isCurrent && c.clusterName === target)?.rpcAddress;
    if (!address) return undefined;
    return namespaceOn(clients, address, { id }, waitMs).catch((e: unknown) => ({ unanswered: `${ConnectError.from(e).message} (asked for ${waitMs} ms)` }));
  };
}

/**
 * How `asked` sees cluster `name`: its row, "unknown" (NOT_FOUND), `{ down }` when nothing took
 * the connection (refused, or its host not found) or what took it ended it unanswered twice (CUT),
 * or undefined when it did not answer.
 */
export type Seen = ClusterInfo | "unknown" | { down: string } | undefined;

/** Nothing runs at the address now: a failover would make active a cluster that takes no writes. */
const DOWN = new Set(["connection refused", "host not found"]);
/**
 * Something takes the connection and ends it unanswered: a proxy or load balancer in front of a
 * target that is down (TCP connects to it, then it resets). Down too when a second try, on a new
 * connection, ends so: the first may have gone over a kept-alive connection the target closed.
 */
const CUT = new Set(["connection reset", "connection closed"]);

/**
 * How the cluster at address sees cluster name (Seen), asked for at most waitMs (twice as long where
 * the first try was reset), or until signal (the asking call's) fires: undefined then.
 */
export async function seenBy(clients: RemoteClientPool, address: string, name: string, waitMs: number, { signal, again = false }: { signal?: AbortSignal; again?: boolean } = {}): Promise<Seen> {
  const asked = Date.now();
  try {
    return (await clients.get(address).operator.describeCluster({ clusterName: name }, { timeoutMs: waitMs, signal })).cluster;
  } catch (e) {
    if (signal?.aborted) return undefined;
    if (e instanceof ConnectError && e.code === Code.NotFound && !notServed(e)) return "unknown";
    const reason = fetchFailureReason(e);
    if (reason && DOWN.has(reason)) return { down: reason };
    if (!reason || !CUT.has(reason)) return undefined;
    // Before, a target behind a proxy was "no answer": HANDOVER held every write for the failover's timeout.
    if (again) return { down: `${reason} on each of 2 tries: something takes the connection there, but no tern answers behind it` };
    const left = waitMs - (Date.now() - asked);
    return left > 0 ? seenBy(clients, address, name, left, { signal, again: true }) : undefined;
  }
}

/**
 * Why target, which sees this cluster (current) as seen says, never pulls from it (neither its
 * histories nor its namespace changes) until an operator connects the two, or undefined: it does
 * not know it, or knows another of its name. A side disabled there only pauses its pulls.
 */
export function neverPulls(current: CurrentCluster, target: string, seen: Seen): string | undefined {
  const here = current.clusterName;
  if (seen === "unknown") return `cluster ${target} does not know cluster ${here}: connect it there with cluster upsert`;
  if (seen && "clusterId" in seen && seen.clusterId && seen.clusterId !== current.clusterId) {
    return `cluster ${target} knows another ${here} (id ${seen.clusterId}; this one is ${current.clusterId}): connect this one there with cluster upsert`;
  }
  return undefined;
}

/**
 * Why a graceful failover to target would leave a cluster without what target writes, as the
 * clusters themselves say, or undefined. Target pulls nothing from here when its side of the
 * connection is disabled, or it does not know this cluster (or knows another of its name): it can
 * never catch up. Another member of the namespace takes nothing from target when either of the
 * two does not know the other (a mesh with a link missing). A target that refuses the connection
 * (or takes it and resets it, twice: a proxy in front of a target that is down) is down: made
 * active, it would take no writes, though it acked everything before it went. A
 * cluster that does not answer (a link that drops packets), or a member other than the target
 * that is down, or a connection disabled elsewhere (paused, it catches up once enabled), is no reason. Nor
 * does a target whose backfill of the namespace has not finished hold its runs. Asked before
 * HANDOVER, so a failover that could only time out holds no write for its timeout.
 */
export function createFailoverTargetCheck({ clusters, clients, timeoutMs = 2_000 }: FailoverTargetCheckDeps) {
  const current: CurrentCluster = clusters.current();
  const here = current.clusterName;

  /** A backfill of namespace on target that has not finished (unfinishedBackfill), as target says. */
  async function backfillProblem(target: string, address: string, namespace: string, members: string[], waitMs: number): Promise<string | undefined> {
    return unfinishedBackfill(target, namespace, await backfillJobsOn(clients, address, namespace, waitMs), members);
  }

  /**
   * What target says of this cluster, and what the operator can do instead: a forced failover
   * made here goes around a connection paused on target (target hears of it once enabled), not
   * around a target that is down (made active, it takes no writes either) or one that never pulls
   * from here (forced-failover-check.ts refuses it: made on target, it is taken).
   */
  function targetSide(target: string, address: string, seen: Seen): TargetProblem | undefined {
    if (seen && seen !== "unknown" && "down" in seen) {
      return { why: `cluster ${target} cannot be reached at ${address} (${seen.down}): made active now, it would take no writes`, instead: `bring it back first (a forced failover to it would take no writes either)` };
    }
    const never = neverPulls(current, target, seen);
    if (never) return { why: `${never}, so it cannot catch up`, instead: `fix that first, or fail over forced on ${target} itself (made on ${here}, ${target} would never hear of it)` };
    const paused = seen && seen !== "unknown" && !seen.enableConnection;
    return fixOrForce(paused ? `replication with cluster ${here} is disabled on ${target} (enable_connection is false there), so it cannot catch up` : undefined);
  }

  /**
   * Why target, holding a namespace of ns's name with another id (a stale copy of one deleted
   * here and registered again), never applies ns's changes (replication/namespace-held.ts), or undefined.
   */
  async function otherCopy(target: string, address: string, ns: TargetNamespace, byId: ById, waitMs: number): Promise<string | undefined> {
    // By id first: a target that holds it (nearly always) is asked nothing of its name.
    if (byId !== "not found") return undefined;
    // "": it holds none; undefined: no answer.
    const there = await namespaceOn(clients, address, { namespace: ns.name }, waitMs).then((r) => (r === "not found" ? "" : r.id), () => undefined);
    if (!there || there === ns.id) return undefined;
    return `cluster ${target} holds another namespace ${ns.name} (id ${there}; this one is ${ns.id}) and holds this one's changes back, so it would never hear of the switch`;
  }

  return async function targetProblem(target: string, members: string[] = [], failoverTimeoutMs = Infinity, ns?: TargetNamespace): Promise<TargetProblem | undefined> {
    const namespace = ns?.name;
    // Within the failover's own timeout: a target behind a link that drops packets is waited for once.
    const waitMs = waitFor(timeoutMs, failoverTimeoutMs);
    const known = new Map((await clusters.list()).filter((c) => !c.isCurrent).map((c) => [c.clusterName, c.rpcAddress]));
    const targetAddress = known.get(target);
    if (!targetAddress) return undefined;
    const others = members.filter((m) => m !== here && m !== target);
    const byIdAsked: Promise<ById> = ns ? namespaceOn(clients, targetAddress, { id: ns.id }, waitMs).catch(() => undefined) : Promise.resolve(undefined);
    const [mine, stale, backfill, ...links] = await Promise.all([
      seenBy(clients, targetAddress, here, waitMs),
      ns ? byIdAsked.then((byId) => otherCopy(target, targetAddress, ns, byId, waitMs)) : undefined,
      namespace ? backfillProblem(target, targetAddress, namespace, members, waitMs) : undefined,
      ...others.map(async (m) => {
        const address = known.get(m);
        const [byTarget, byMember] = await Promise.all([seenBy(clients, targetAddress, m, waitMs), address ? seenBy(clients, address, target, waitMs) : undefined]);
        if (byTarget === "unknown") return `cluster ${target} does not know cluster ${m}, one of the namespace's clusters, so ${m} would take nothing ${target} writes: connect them both ways`;
        if (byMember === "unknown") return `cluster ${m}, one of the namespace's clusters, does not know cluster ${target}, so it would take nothing ${target} writes: connect them both ways`;
        return undefined;
      }),
    ]);
    const side = targetSide(target, targetAddress, mine);
    if (side) return side;
    const missed = ns && missedFailover(target, ns, await byIdAsked);
    if (missed) return missed;
    if (stale) return { why: stale, instead: `delete that copy on ${target} first ('tern operator namespace delete ${namespace}' there: it is stale), then fail over` };
    // A forced failover would leave the member without target's writes too.
    const link = links.find((l) => l !== undefined);
    if (link) return { why: link, instead: "fix that first (a forced failover would leave it so too)" };
    if (!backfill) return undefined;
    // A forced failover to it is refused too, unless the operator takes the loss (forced-failover-check.ts).
    const forced = `operator namespace update -n ${namespace} --active-cluster ${target} --allow-unfinished-backfill`;
    return { why: backfill, instead: `wait for its backfill to be DONE, or, if its source is gone for good, fail over forced taking the loss (${forced})` };
  };
}
