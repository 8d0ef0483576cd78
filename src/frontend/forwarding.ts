import { Code, ConnectError, type CallOptions, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { durationFromMs, type Duration } from "@bufbuild/protobuf/wkt";
import { ulid } from "ulid";
import { remoteOf, type ClusterDirectory } from "../cluster/directory";
import { peerFailureSentence, type RemoteClientPool, type RemoteClients } from "../cluster/remote-client";
import type { RedirectionPolicy } from "../config/schema";
import { ACTIVE_CLUSTER_HEADER, NamespaceNotActiveError, TernError, unavailable } from "../errors";
import type { WorkflowService } from "../gen/tern/workflow/v1/service_pb";
import type { NamespaceRegistry } from "../namespace/registry";
import { shown } from "../shown";
import { MAX_TIMER_MS } from "../sleep";
import { answerAtDeadline, answerWithinMs, deadlineAnswerKey, deadlineTextKey } from "./deadline";
import { requestIdKey } from "./interceptors";
import type { RedirectionOutcomes } from "./redirection-outcomes";
import { expiredPollPage, historyWaitMs } from "./workflow-handler";

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

/**
 * The frontend clients of name, the cluster active for namespace. Where this cluster cannot
 * forward there, the call is refused as Temporal refuses one it cannot forward (NamespaceNotActive,
 * FAILED_PRECONDITION), saying why: no retry helps until an operator connects the two.
 */
async function frontendOf(clusters: ClusterDirectory, pool: RemoteClientPool, namespace: string, name: string): Promise<RemoteClients> {
  const here = clusters.current().clusterName;
  const row = await remoteOf(clusters, name);
  if (!row) {
    throw new NamespaceNotActiveError(namespace, name, undefined, `${here} is not connected to ${name}, so it cannot forward the call there: send it to ${name}, or connect the two clusters (cluster upsert on each)`);
  }
  // Disabled by an operator (upsert-remote-cluster --enable-connection=false): nothing goes over it, forwarded calls neither.
  if (!row.enableConnection) {
    throw new NamespaceNotActiveError(namespace, name, row.rpcAddress, `${here}'s connection to ${name} is disabled (enable_connection is false), so it does not forward the call there: ` +
      `send it to ${name}, or enable the connection (admin cluster upsert-remote-cluster --enable-connection=true)`);
  }
  return pool.get(row.rpcAddress);
}

/**
 * How a forwarding failure ends: the request id to find it by, a write's own (the forwarding
 * cluster made one up if the caller gave none; a retry with it is applied once, whether or not
 * the failed call reached the target), else the call's (in this cluster's log of the failure).
 */
function retryText(ctx: HandlerContext, requestId: string | undefined): string {
  return requestId ? ` (request id ${shown(requestId)}); retry with the same request id` : ` (request id ${ctx.values.get(requestIdKey)}); retry`;
}

/** Why a forwarded call failed when target gave no answer within ms: the call may have reached it. */
function unansweredText(ctx: HandlerContext, to: ForwardTarget, ms: string): string {
  const what = `the forwarded ${to.what} within ${ms}`;
  return `cluster ${to.target}, where namespace ${to.namespace} is active, did not answer ` +
    (to.requestId ? `${what} (request id ${shown(to.requestId)}); it may still be applied there: retry with the same request id` : `${what}${retryText(ctx, undefined)}`);
}

/**
 * How long a forwarded call waits for the active cluster's answer, past the time its own work may
 * take there (a long poll's wait, a failover's timeout), when its caller set no earlier deadline.
 * Without a bound, a call over a link that drops packets waited as long as TCP kept the
 * connection: minutes, and on a kept-alive connection whose packets vanish, until the kernel
 * gives up on it.
 */
export const FORWARD_TIMEOUT_MS = 30_000;

/**
 * The caller's headers a forwarded call carries, the fixed set Temporal's frontend passes on
 * (common/headers propagateHeaders): the client that made the call (its SDK's name and version,
 * the server versions and features it supports) and who it made it for. No other: a caller's
 * credentials and headers of its own stay with the cluster it sent them to.
 */
const CALLER_HEADERS = ["client-name", "client-version", "supported-server-versions", "supported-features", "caller-name", "caller-type", "call-initiation"];

/** Where a call goes and what it is, for forward(). */
export interface ForwardTarget {
  /** This cluster, named in the marker header. */
  current: string;
  target: string;
  namespace: string;
  /** The call, for the error when no answer comes: "SignalWorkflowExecution". */
  what: string;
  /** The longest wait for the answer, unless the caller's deadline comes first. */
  limitMs: number;
  /** The forwarded request's id: a retry with it is applied once. */
  requestId?: string;
  /** Said after the retry advice when the target gave no answer (down, cut off): what else to do. */
  whenUnanswered?: string;
}

/**
 * Makes a call to the active cluster (call, given its options: the marker header, the caller's
 * cancellation, the earlier of its deadline and limitMs) and answers its failures as the caller
 * should see them: handedBack, an answer that did not come by limitMs or none at all (a connection
 * reset or refused), UNAVAILABLE naming the request id to retry with (retryText): the call may
 * have reached the target. A call with an answer for its deadline (deadlineAnswerKey: a history
 * long poll's empty page) gives that when the caller's deadline, less the margin, comes first.
 */
export async function forward<T>(ctx: HandlerContext, to: ForwardTarget, call: (options: CallOptions) => Promise<T>): Promise<T> {
  const callerMs = ctx.timeoutMs();
  const ours = callerMs === undefined || to.limitMs < callerMs;
  // Given up a little before the caller's deadline, the call is answered with where it waited and
  // the request id to retry with (one made up here the caller has no other way to learn), not
  // with "the operation timed out", the caller's own timer or this server's at the deadline.
  const timeoutMs = ours ? to.limitMs : answerWithinMs(callerMs);
  const late = ours ? undefined : unansweredText(ctx, to, `${callerMs} ms, the caller's deadline`);
  // What this server answers at the deadline, should it come first (deadline.ts).
  if (late) ctx.values.set(deadlineTextKey, late);
  // The caller's request id goes along: the active cluster logs the call under it too.
  const headers = new Headers({ [FORWARDED_HEADER]: to.current, "x-request-id": ctx.values.get(requestIdKey) });
  for (const name of CALLER_HEADERS) {
    const value = ctx.requestHeader.get(name);
    if (value !== null) headers.set(name, value);
  }
  // A deadline past a timer's reach (a failover's --timeout of 30 days) is none: its timer fired at once.
  const options = { headers, signal: ctx.signal, timeoutMs: timeoutMs > MAX_TIMER_MS ? undefined : timeoutMs };
  try {
    return await call(options);
  } catch (e) {
    if (e instanceof ConnectError && e.code === Code.DeadlineExceeded) {
      if (ours) throw unavailable(`${unansweredText(ctx, to, `${to.limitMs} ms`)}${to.whenUnanswered ?? ""}`);
      // The target's answer held past the margin its wait was fitted to (fittedLongPoll), a stall
      // on its path or its own past its deadline: the caller's deadline has not come yet.
      const answer = ctx.values.get(deadlineAnswerKey);
      if (answer) return answer.message as T;
      throw new ConnectError(late!, Code.DeadlineExceeded);
    }
    const retry = retryText(ctx, to.requestId);
    // A connection reset may come after the target applied the call: the retry must carry its request id.
    if (e instanceof ConnectError && e.code === Code.Unknown) throw unavailable(`${peerFailureSentence(e, to.target)}${retry}${to.whenUnanswered ?? ""}`);
    // The active cluster's own failure, logged there with its stack under the request id it names:
    // passed on as it answered, with its details, not as a failure of this cluster's (toConnectError's
    // INTERNAL). Its headers stay behind, as Temporal's forwarding passes the status alone: its
    // x-request-id is the one sent with the call, which this cluster's answer carries too.
    if (e instanceof ConnectError && e.code === Code.Internal) throw new TernError("internal", e.rawMessage, {}, e.details);
    throw handedBack(e, to, retry) ?? e;
  } finally {
    // Answered (or failed in its own words): a deadline met by the handler's work after it (a
    // failover's wait here to hear of the switch) is not this call's.
    if (late) ctx.values.delete(deadlineTextKey);
  }
}

/**
 * A forwarded call's answer from target that current is active: each names the other while
 * a failover reaches them one after the other (the target handed over; current has not
 * heard yet). Retryable: the failover lands here within moments. Undefined for any other.
 */
function handedBack(e: unknown, { namespace, target, current }: ForwardTarget, retry: string): Error | undefined {
  if (!(e instanceof ConnectError) || e.code !== Code.FailedPrecondition) return undefined;
  // The header from a tern that sends it; the message from one before it (and a failover's).
  const active = e.metadata.get(ACTIVE_CLUSTER_HEADER) ?? (e.rawMessage === `namespace ${namespace} is active in cluster ${current}` ? current : undefined);
  if (active !== current) return undefined;
  return failingOver(namespace, target, current, retry);
}

/** The retryable answer to a call that target refused naming active, which has not heard of the failover yet. */
function failingOver(namespace: string, target: string, active: string, retry: string): Error {
  return unavailable(`namespace ${namespace} is failing over: cluster ${target} says ${active} is active, and ${active} has not heard yet${retry}`);
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
 * forward() to target, the cluster this one names active for the namespace, following a refusal
 * that names another (with three or more clusters, target may have handed over to a third this
 * one has not heard of: its write would fail where a retry lands). Each cluster is tried once;
 * a refusal naming this cluster (handedBack), or one already tried, is retryable UNAVAILABLE.
 * The call is counted once, by the target whose answer ends it (a refusal followed to another
 * cluster is not counted), as it came back from there, before forward() makes an answer of it (a
 * long poll's empty page at the deadline): redirections.
 */
export async function callActive<T>(
  { clusters, clients, redirections }: Pick<ForwardingDeps, "clusters" | "clients" | "redirections">,
  ctx: HandlerContext,
  to: Omit<ForwardTarget, "current">,
  call: (remote: RemoteClients, options: CallOptions) => Promise<T>,
): Promise<T> {
  const current = clusters.current().clusterName;
  const retry = retryText(ctx, to.requestId);
  const tried = new Set([current]);
  for (let target = to.target; ; ) {
    tried.add(target);
    const remote = await frontendOf(clusters, clients, to.namespace, target);
    try {
      const sent = { ...to, current, target };
      // A refusal naming a cluster not tried yet: the loop below follows it there, where the call is counted.
      const followed = (e: unknown) => {
        const next = redirectedTo(e, to.namespace);
        return next !== undefined && !tried.has(next);
      };
      return await forward(ctx, sent, (options) => redirections.observed(sent, ctx.values.get(requestIdKey), call(remote, options), followed));
    } catch (e) {
      const next = redirectedTo(e, to.namespace);
      if (next === undefined) throw e;
      if (tried.has(next)) throw unavailable(`namespace ${to.namespace} is failing over: cluster ${target} says ${next} is active, which has not heard yet${retry}`);
      target = next;
    }
  }
}

export interface ForwardingDeps {
  inner: Workflow;
  policy: RedirectionPolicy;
  namespaces: NamespaceRegistry;
  clusters: ClusterDirectory;
  clients: RemoteClientPool;
  /** Counts each forwarded call by target, and logs those never answered. */
  redirections: RedirectionOutcomes;
  /** FORWARD_TIMEOUT_MS unless set (tests). */
  timeoutMs?: number;
}

/**
 * Wraps the WorkflowService (DESIGN.md section 5): a call on a global namespace that is
 * active elsewhere goes to the active cluster's frontend when the policy covers it. The
 * request keeps its requestId (one is made first when empty, so retrying the forwarded
 * call stays idempotent); the remote's error codes come back unchanged. A call it does not
 * cover is refused naming the active cluster and its frontend address.
 */
export function createForwardingWorkflowService(deps: ForwardingDeps): Workflow {
  return withActiveAddress(deps.policy === "noop" ? deps.inner : forwarding(deps), deps.clusters, deps.policy);
}

/**
 * service with each refusal of a call for a namespace active elsewhere (one the policy does not
 * forward) naming the active cluster's frontend address, where this cluster's metadata has it:
 * a client cannot act on a cluster's name alone.
 */
function withActiveAddress(service: Workflow, clusters: ClusterDirectory, policy: ForwardingDeps["policy"]): Workflow {
  const current = clusters.current().clusterName;
  /**
   * The refusal e with the active cluster's address, if it is one and this cluster knows the
   * address; else e. A refusal of a call forwarded from the cluster it names is handedBack's
   * UNAVAILABLE here already: a tern from before handedBack passes the answer on as it comes.
   */
  async function withAddress(e: unknown, req: { requestId?: string }, ctx: HandlerContext, notForwarded?: string): Promise<never> {
    if (!(e instanceof NamespaceNotActiveError)) throw e;
    const forwardedBy = ctx.requestHeader.get(FORWARDED_HEADER);
    if (forwardedBy === e.activeCluster) throw failingOver(e.namespace, current, e.activeCluster, retryText(ctx, req.requestId));
    const why = e.why ?? (forwardedBy || !notForwarded ? undefined : notForwardedWhy(current, e.activeCluster, notForwarded));
    const address = e.activeAddress ?? (await remoteOf(clusters, e.activeCluster).catch(() => undefined))?.rpcAddress;
    if (address === e.activeAddress && why === e.why) throw e;
    throw new NamespaceNotActiveError(e.namespace, e.activeCluster, address, why);
  }
  const wrapped: Record<string, unknown> = { ...service };
  for (const name of ALL) {
    const method = service[name] as (req: never, ctx: HandlerContext) => unknown;
    // A write the policy leaves out, refused: a caller who set forwarding up is told why this one was not forwarded.
    const notForwarded = policy === "selected-apis-forwarding" && !SELECTED.includes(name) ? name.charAt(0).toUpperCase() + name.slice(1) : undefined;
    // Every write passes here: an answer costs no async frame of its own, only a failure is looked at.
    wrapped[name] = (req: never, ctx: HandlerContext) => {
      const answer = method.call(service, req, ctx);
      return answer instanceof Promise ? answer.catch((e: unknown) => withAddress(e, req, ctx, notForwarded)) : answer;
    };
  }
  return wrapped as Workflow;
}

/** Why what (CompleteWorkflowExecution) was refused here rather than forwarded under selected-apis-forwarding. */
function notForwardedWhy(here: string, active: string, what: string): string {
  return `${here} forwards only start, signal, signal-with-start, cancel and terminate (dcRedirectionPolicy selected-apis-forwarding), not ${what}: ` +
    `send it to ${active}, or set all-apis-forwarding here`;
}

/**
 * A history long poll whose wait ends in time for the active cluster's page to come back by the
 * forwarded call's own deadline (forward() gives up answerWithinMs of the caller's): its page,
 * empty, as the active cluster answers the same call at its deadline, not DEADLINE_EXCEEDED from
 * here. The active cluster fits the wait to the deadline it is sent too; a tern before 2026-12-07 did not.
 */
function fittedLongPoll<R extends { waitTimeout?: Duration }>(req: R, ctx: HandlerContext): R {
  const callerMs = ctx.timeoutMs();
  if (callerMs === undefined) return req;
  const waitMs = answerWithinMs(answerWithinMs(callerMs));
  return waitMs < historyWaitMs(req.waitTimeout) ? { ...req, waitTimeout: durationFromMs(waitMs) } : req;
}

/** inner with the calls the policy covers forwarded to the active cluster. */
function forwarding({ inner, policy, namespaces, clusters, clients, redirections, timeoutMs = FORWARD_TIMEOUT_MS }: ForwardingDeps): Workflow {
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
      const history = req as typeof req & { waitNewEvent?: boolean; waitTimeout?: Duration; nextPageToken?: Uint8Array };
      const longPoll = name === "getWorkflowExecutionHistory" && history.waitNewEvent;
      const message = longPoll ? fittedLongPoll(history, ctx) : "requestId" in req && !req.requestId ? { ...req, requestId: ulid() } : req;
      // At the deadline, here or on the way, the page the active cluster answers when its wait ends.
      if (longPoll && ctx.timeoutMs() !== undefined) answerAtDeadline(ctx, expiredPollPage({ waitNewEvent: true, nextPageToken: history.nextPageToken ?? new Uint8Array() }));
      // A history long poll's answer may take its wait.
      const limitMs = longPoll ? historyWaitMs(history.waitTimeout) + timeoutMs : timeoutMs;
      const what = name.charAt(0).toUpperCase() + name.slice(1);
      return callActive({ clusters, clients, redirections }, ctx, { target, namespace: req.namespace, what, limitMs, requestId: message.requestId }, ({ workflow }, options) => {
        const call = workflow[name as keyof typeof workflow] as (m: unknown, o: CallOptions) => Promise<unknown>;
        return call.call(workflow, message, options);
      });
    };
  }
  return wrapped as Workflow;
}
