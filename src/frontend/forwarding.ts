import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { ulid } from "ulid";
import type { ClusterDirectory } from "../cluster/directory";
import { peerUnreachable, type RemoteClientPool, type RemoteClients } from "../cluster/remote-client";
import type { RedirectionPolicy } from "../config/schema";
import { ACTIVE_CLUSTER_HEADER, NamespaceNotActiveError, unavailable } from "../errors";
import type { WorkflowService } from "../gen/tern/workflow/v1/service_pb";
import type { NamespaceRegistry } from "../namespace/registry";

/** Marks a forwarded call; a call carrying it is never forwarded again (no loops). */
export const FORWARDED_HEADER = "x-tern-forwarded-from";

type Workflow = ServiceImpl<typeof WorkflowService>;
type MethodName = keyof Workflow;

/** The writes selected-apis-forwarding forwards (as Temporal's selected-apis-forwarding). */
const SELECTED: MethodName[] = [
  "startWorkflowExecution",
  "signalWorkflowExecution",
  "signalWithStartWorkflowExecution",
  "requestCancelWorkflowExecution",
  "terminateWorkflowExecution",
];

/** Every namespace-scoped execution API, writes and reads; namespace verbs always run locally. */
const ALL: MethodName[] = [
  ...SELECTED,
  "completeWorkflowExecution",
  "failWorkflowExecution",
  "recordMarker",
  "describeWorkflowExecution",
  "getWorkflowExecutionHistory",
  "listWorkflowExecutions",
];

/** The frontend clients of a connected cluster, by name. */
export async function frontendOf(clusters: ClusterDirectory, pool: RemoteClientPool, name: string): Promise<RemoteClients> {
  const row = (await clusters.list()).find((c) => c.clusterName === name && !c.isCurrent);
  if (!row) throw unavailable(`cannot forward to cluster ${name}: it is not connected to ${clusters.current().clusterName}`);
  return pool.get(row.rpcAddress);
}

/** Call options of a forwarded call: the marker header, and the caller's deadline and cancellation. */
export function forwardOptions(ctx: HandlerContext, from: string) {
  return { headers: { [FORWARDED_HEADER]: from }, signal: ctx.signal, timeoutMs: ctx.timeoutMs() };
}

/**
 * A forwarded call's answer from target that current is active: each names the other while
 * a failover reaches them one after the other (the target handed over; current has not
 * heard yet). Retryable: the failover lands here within moments. Undefined for any other.
 */
export function handedBack(e: unknown, namespace: string, target: string, current: string): Error | undefined {
  if (!(e instanceof ConnectError) || e.code !== Code.FailedPrecondition) return undefined;
  // The header from a tern that sends it; the message from one before it (and a failover's).
  const active = e.metadata.get(ACTIVE_CLUSTER_HEADER) ?? (e.rawMessage === `namespace ${namespace} is active in cluster ${current}` ? current : undefined);
  if (active !== current) return undefined;
  return unavailable(`namespace ${namespace} is failing over: cluster ${target} says ${current} is active, and ${current} has not heard yet; retry`);
}

/**
 * The cluster a forwarded call's refusal names as active instead (the header, or the message
 * of a tern before it and of a failover's refusal); undefined for any other answer.
 */
function redirectedTo(e: unknown, namespace: string): string | undefined {
  if (!(e instanceof ConnectError) || e.code !== Code.FailedPrecondition) return undefined;
  const prefix = `namespace ${namespace} is active in cluster `;
  return e.metadata.get(ACTIVE_CLUSTER_HEADER) ?? (e.rawMessage.startsWith(prefix) ? e.rawMessage.slice(prefix.length) : undefined);
}

/**
 * Calls the frontend of target, the cluster current names active for namespace, and follows a
 * refusal that names another (with three or more clusters, target may have handed over to a
 * third that current has not heard of: its write would fail where a retry lands). Each cluster
 * is tried once; a refusal naming current, or one already tried, is retryable UNAVAILABLE.
 */
export async function callActive<T>(
  { clusters, clients }: Pick<ForwardingDeps, "clusters" | "clients">,
  namespace: string,
  target: string,
  call: (remote: RemoteClients) => Promise<T>,
): Promise<T> {
  const current = clusters.current().clusterName;
  const tried = new Set([current]);
  for (let hop = target; ; ) {
    tried.add(hop);
    try {
      return await call(await frontendOf(clusters, clients, hop));
    } catch (e) {
      const back = handedBack(e, namespace, hop, current);
      if (back) throw back;
      const next = redirectedTo(e, namespace);
      if (next === undefined) throw peerUnreachable(e, hop);
      if (tried.has(next)) throw unavailable(`namespace ${namespace} is failing over: cluster ${hop} says ${next} is active, which has not heard yet; retry`);
      hop = next;
    }
  }
}

export interface ForwardingDeps {
  inner: Workflow;
  policy: RedirectionPolicy;
  namespaces: NamespaceRegistry;
  clusters: ClusterDirectory;
  clients: RemoteClientPool;
}

/**
 * Wraps the WorkflowService (DESIGN.md section 5): a call on a global namespace that is
 * active elsewhere goes to the active cluster's frontend when the policy covers it. The
 * request keeps its requestId (one is made first when empty, so retrying the forwarded
 * call stays idempotent); the remote's error codes come back unchanged.
 */
export function createForwardingWorkflowService({ inner, policy, namespaces, clusters, clients }: ForwardingDeps): Workflow {
  if (policy === "noop") return inner;
  const current = clusters.current().clusterName;

  /** The active cluster to forward to, or undefined to serve here. */
  async function forwardTarget(namespace: string, ctx: HandlerContext): Promise<string | undefined> {
    if (!namespace || ctx.requestHeader.get(FORWARDED_HEADER)) return undefined;
    const ns = await namespaces.getByName(namespace).catch(() => undefined);
    if (!ns || !ns.isGlobal || ns.activeClusterName === current) return undefined;
    return ns.activeClusterName;
  }

  const wrapped: Record<string, unknown> = { ...inner };
  for (const name of policy === "all-apis-forwarding" ? ALL : SELECTED) {
    const local = inner[name] as (req: never, ctx: HandlerContext) => unknown;
    wrapped[name] = async (req: { namespace: string; requestId?: string }, ctx: HandlerContext) => {
      let target = await forwardTarget(req.namespace, ctx);
      if (!target) {
        try {
          return await local.call(inner, req as never, ctx);
        } catch (e) {
          // The namespace failed over after our cached read: forward to the cluster now active.
          if (!(e instanceof NamespaceNotActiveError) || ctx.requestHeader.get(FORWARDED_HEADER)) throw e;
          target = e.activeCluster;
        }
      }
      const message = "requestId" in req && !req.requestId ? { ...req, requestId: ulid() } : req;
      return callActive({ clusters, clients }, req.namespace, target, ({ workflow }) => {
        const call = workflow[name as keyof typeof workflow] as (m: unknown, o: unknown) => Promise<unknown>;
        return call.call(workflow, message, forwardOptions(ctx, current));
      });
    };
  }
  return wrapped as Workflow;
}
