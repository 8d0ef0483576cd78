import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import { resourceExhausted, TernError } from "../errors";
import type { Logger } from "../observability/log";
import type { Metrics } from "../observability/metrics";
import type { CallFailures } from "./call-failures";
import { refuseNulText } from "./nul-text";
import { callRecordKey, requestIdOf } from "./refused-calls";
import type { Borrow, createRateLimiter } from "./rate-limiter";

/** The request id of the call being handled (x-request-id, or a new ULID). */
export const requestIdKey = createContextKey<string>("", { description: "tern request id" });

/** The namespace a request names, if its message has a namespace field. */
const namespaceOf = (message: unknown): string | undefined => {
  const ns = (message as { namespace?: unknown })?.namespace;
  return typeof ns === "string" && ns ? ns : undefined;
};

/** The label of a namespace this server does not know, as Temporal's `_unknown_` tag. */
export const UNKNOWN_NAMESPACE = "_unknown_";

/** Request id, rate limits, the refusal of NUL text, metrics, logs and error mapping around every RPC. */
export function createFrontendInterceptor(deps: {
  metrics: Metrics;
  log: Logger;
  /** Counts and logs failed calls, alike with the calls connect refuses before this interceptor. */
  failures: CallFailures;
  limiter: ReturnType<typeof createRateLimiter>;
  /** Whether a namespace name is one the registry has read or learnt (no read of its own). */
  knownNamespace: (name: string) => boolean;
  /** Reads every namespace's name for knownNamespace, at most so often (registry.readNames): none, no second look. */
  readNames?: () => Promise<void>;
}): Interceptor {
  const { metrics, log, failures, limiter, knownNamespace, readNames } = deps;
  /**
   * Whether a call refused on UNKNOWN_NAMESPACE's bucket is of a real namespace after all, once
   * the names are read: a flood of made-up names kept that bucket empty, and a real namespace's
   * calls, none of them let through to be read, were refused as long as the flood went on.
   */
  const realAfterAll = async (named: string) => Boolean(readNames) && (await readNames!().then(() => knownNamespace(named), () => false));
  /**
   * A request's namespace as its metric label, log field and rate-limit bucket: a name a client
   * made up is UNKNOWN_NAMESPACE. Every name sent once was a series of its own for good, and a
   * bucket: 300 misspelt names added 500 KB to /metrics, one 1 MB name 19 MB. Decided without a
   * read (a flood of made-up names meets the rate limit first): the bucket before the call, where
   * a namespace's first request after a start, before anything looked it up, is UNKNOWN_NAMESPACE
   * (and settled on the namespace's own once answered: limiter.settle); the metrics' label of such
   * a request once it is answered, when its handler has read the name.
   */
  const labelOf = (ns: string | undefined) => (!ns ? "" : knownNamespace(ns) ? ns : UNKNOWN_NAMESPACE);
  const failed = failures.failed;
  /**
   * A streamed answer's messages, an error among them mapped as a unary call's is (its latency
   * is the stream's start). A caller that closed the stream (a peer giving up a silent one)
   * ends it with an AbortError that names nothing: CANCELED, not an INTERNAL error to log.
   */
  async function* mapped<T>(messages: AsyncIterable<T>, requestId: string, labels: { operation: string; namespace: string }, signal: AbortSignal) {
    try {
      yield* messages;
    } catch (e) {
      throw failed(signal.aborted && !(e instanceof TernError) && !(e instanceof ConnectError) ? callerLeft(e) : e, requestId, labels);
    }
  }
  return (next) => async (req) => {
    // The id watchRefusals gave the call (the caller's x-request-id, or a new one), which also marks it seen here.
    const call = req.contextValues.get(callRecordKey);
    if (call) call.intercepted = true;
    const requestId = call?.requestId || requestIdOf(req.header.get("x-request-id"));
    req.contextValues.set(requestIdKey, requestId);
    const operation = req.method.name;
    const named = req.stream ? undefined : namespaceOf(req.message);
    const namespace = labelOf(named);
    let labels = { operation, namespace };
    // A name not read yet (its register, its first call after a start) is counted once answered,
    // by its name if the handler found it: before 2026-12-07 such a call was UNKNOWN_NAMESPACE's.
    let pending = namespace === UNKNOWN_NAMESPACE;
    /** Let through on UNKNOWN_NAMESPACE's bucket: settled on the namespace's own once the name is found. */
    let borrowed: Borrow | undefined;
    if (!pending) metrics.inc("service_requests", labels);
    const answered = () => {
      if (pending) {
        pending = false;
        labels = { operation, namespace: labelOf(named) };
        metrics.inc("service_requests", labels);
        if (borrowed) limiter.settle(borrowed, labels.namespace !== UNKNOWN_NAMESPACE);
      }
      return labels;
    };
    const started = performance.now();
    try {
      if (operation !== "Check" && operation !== "Watch") {
        let { waitMs, scope, borrow } = limiter.take(namespace || undefined, named);
        if (waitMs > 0 && namespace === UNKNOWN_NAMESPACE && named && (await realAfterAll(named))) ({ waitMs, scope, borrow } = limiter.take(named, named));
        if (waitMs > 0) throw resourceExhausted(`rate limit of ${scope} exceeded`, waitMs);
        borrowed = borrow;
      }
      if (!req.stream) refuseNulText(req.method.input, req.message);
      const res = await next(req);
      res.header.set("x-request-id", requestId);
      answered();
      log.debug("rpc", { requestId, operation, namespace: labels.namespace || undefined, ms: Math.round(performance.now() - started) });
      return res.stream ? { ...res, message: mapped(res.message, requestId, labels, req.signal) } : res;
    } catch (e) {
      // Work the call's signal ended (persistence/call-signal.ts) rejects with its reason: a
      // deadline's is DEADLINE_EXCEEDED already; a caller that left is CANCELED, not INTERNAL.
      throw failed(req.signal.aborted && e === req.signal.reason && !(e instanceof ConnectError) ? callerLeft(e) : e, requestId, answered());
    } finally {
      metrics.observe("service_latency", labels, (performance.now() - started) / 1000);
    }
  };
}

/** The error of a call its caller closed: CANCELED, saying so and why (e.g. "The connection was closed."). */
function callerLeft(e: unknown): ConnectError {
  const why = e instanceof Error && e.message ? `: ${e.message}` : "";
  return new ConnectError(`the caller closed the call${why}`, Code.Canceled);
}
