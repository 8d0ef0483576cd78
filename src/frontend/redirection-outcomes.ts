import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { notTernAnswer, peerFailureText } from "../cluster/remote-client";
import { fetchFailureReason } from "../fetch-failure";
import type { Logger } from "../observability/log";
import type { Metrics } from "../observability/metrics";
import { createRepeatLog } from "../observability/repeat-log";
import { ForwardedCallsSchema, type ForwardedCalls } from "../gen/tern/common/v1/common_pb";

/** One call forwarded to a cluster: its operation ("SignalWorkflowExecution"), namespace and target. */
export interface Redirected {
  what: string;
  namespace: string;
  target: string;
}

/**
 * Why a forwarded call failed, as client_redirection_errors' error_type: `timeout`, no answer by
 * the caller's deadline or the forward's own bound; `unreachable`, none at all (a connection
 * refused or reset, a host not found); `canceled`, its caller left; else the code the target (or
 * something in front of it) answered, as Connect names it (`not_found`, `unavailable`, ...).
 */
export function redirectionErrorType(e: unknown): string {
  const err = ConnectError.from(e);
  if (err.code === Code.DeadlineExceeded) return "timeout";
  if (err.code === Code.Canceled) return "canceled";
  if (fetchFailureReason(err) !== undefined || (err.code === Code.Unknown && notTernAnswer(err) === undefined)) return "unreachable";
  return codeToString(err.code);
}

/**
 * Counts each call forwarded to the active cluster (client_redirection_requests, _errors and
 * _latency, as Temporal's frontend redirection does, by target_cluster) and logs those the target
 * never answered, `timeout` or `unreachable`: a line per target, operation and kind every
 * windowMs, the next one saying how many it stood for (createRepeatLog). A history long poll's
 * caller gets an empty page at its deadline either way (forwarding.ts), so these are what tells
 * an operator that a remote takes connections and never answers.
 */
export function createRedirectionOutcomes({ metrics, log, windowMs, now = Date.now }: { metrics: Metrics; log: Logger; windowMs?: number; now?: () => number }) {
  const unanswered = createRepeatLog(log, { windowMs });
  const recent = new Map<string, TargetRecord>();
  const recordOf = (target: string) => recent.get(target) ?? recent.set(target, { unanswered: [] }).get(target)!;
  return {
    /**
     * call's answer; its outcome counted for to, and logged under requestId (the forwarded call's)
     * if none came. A refusal that handedOn says the caller follows to another cluster is not
     * counted here (only remembered as an answer): the call is counted once, at the cluster that
     * ends it, as Temporal's frontend counts a call it redirects once, by the last target tried.
     */
    async observed<T>(to: Redirected, requestId: string, call: Promise<T>, handedOn: (e: unknown) => boolean = () => false): Promise<T> {
      const labels = { operation: to.what, namespace: to.namespace, target_cluster: to.target };
      const started = performance.now();
      let counted = true;
      try {
        const answer = await call;
        recordOf(to.target).answeredAt = now();
        return answer;
      } catch (e) {
        if (handedOn(e)) {
          counted = false;
          recordOf(to.target).answeredAt = now();
          throw e;
        }
        const errorType = redirectionErrorType(e);
        metrics.inc("client_redirection_errors", { ...labels, error_type: errorType });
        noteOutcome(recordOf(to.target), errorType, e, now());
        if (errorType === "timeout") {
          unanswered.warn("forwarded call timed out: the active cluster did not answer in time", { remote: to.target, operation: to.what, requestId });
        } else if (errorType === "unreachable") {
          unanswered.warn("forwarded call failed: cannot reach the active cluster", { remote: to.target, operation: to.what, reason: peerFailureText(e), requestId });
        }
        throw e;
      } finally {
        if (counted) {
          metrics.inc("client_redirection_requests", labels);
          metrics.observe("client_redirection_latency", { operation: to.what, target_cluster: to.target }, (performance.now() - started) / 1000);
        }
      }
    },
    /** What became of the calls forwarded to target in the last minute, for replication status. */
    recent(target: string): ForwardedCallsSummary {
      const r = recent.get(target);
      if (!r) return { timeouts: 0, unreachable: 0 };
      prune(r, now());
      const timeouts = r.unanswered.filter((u) => u.type === "timeout").length;
      return { timeouts, unreachable: r.unanswered.length - timeouts, last: r.last, answeredAt: r.answeredAt };
    },
  };
}

/** A minute: how far back recent() counts the calls a target left unanswered. */
const RECENT_MS = 60_000;
/** The most unanswered calls kept per target: a flood past it counts as this many (the metric has them all). */
const RECENT_MAX = 10_000;

/** One call a target left unanswered: its error_type and why. */
interface Unanswered {
  type: "timeout" | "unreachable";
  error: string;
  at: number;
}

interface TargetRecord {
  /** The unanswered calls of the last minute, oldest first. */
  unanswered: Unanswered[];
  last?: Unanswered;
  answeredAt?: number;
}

/** The calls forwarded to one target lately: recent()'s answer. */
export interface ForwardedCallsSummary {
  timeouts: number;
  unreachable: number;
  last?: Unanswered;
  answeredAt?: number;
}

/** recent() of the calls forwarded to a remote, as replication status and the cluster list give it. */
export function forwardedCallsMessage(f: ForwardedCallsSummary): ForwardedCalls {
  return create(ForwardedCallsSchema, {
    timeoutsLastMinute: f.timeouts,
    unreachableLastMinute: f.unreachable,
    lastUnansweredType: f.last?.type ?? "",
    lastUnansweredError: f.last?.error ?? "",
    lastUnansweredAt: f.last && timestampFromDate(new Date(f.last.at)),
    lastAnsweredAt: f.answeredAt === undefined ? undefined : timestampFromDate(new Date(f.answeredAt)),
  });
}

/** record with a failed call's outcome: unanswered (timeout, unreachable) kept for a minute; any other code is the target's answer. */
function noteOutcome(record: TargetRecord, errorType: string, e: unknown, at: number): void {
  if (errorType === "canceled") return;
  if (errorType !== "timeout" && errorType !== "unreachable") {
    record.answeredAt = at;
    return;
  }
  record.last = { type: errorType, error: peerFailureText(e), at };
  record.unanswered.push(record.last);
  if (record.unanswered.length > RECENT_MAX) record.unanswered.shift();
  prune(record, at);
}

function prune(record: TargetRecord, at: number): void {
  const from = record.unanswered.findIndex((u) => u.at > at - RECENT_MS);
  record.unanswered.splice(0, from === -1 ? record.unanswered.length : from);
}

export type RedirectionOutcomes = ReturnType<typeof createRedirectionOutcomes>;
