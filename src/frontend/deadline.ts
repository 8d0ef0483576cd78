import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey, type HandlerContext, type Interceptor, type UnaryResponse } from "@connectrpc/connect";

/**
 * What a call's DEADLINE_EXCEEDED says where its handler knows more than connect's "the operation
 * timed out": a forwarded call names the cluster it waited on and the request id to retry with.
 */
export const deadlineTextKey = createContextKey<string | undefined>(undefined, { description: "tern deadline text" });

/**
 * What a call answers at its deadline in place of DEADLINE_EXCEEDED where it has a truer answer: a
 * history long poll's empty page (its wait ended with nothing new; poll again), as Temporal answers
 * a long poll whose deadline comes. A write has none: its outcome is unknown at its deadline.
 */
export const deadlineAnswerKey = createContextKey<DeadlineAnswer | undefined>(undefined, { description: "tern deadline answer" });

/** A deadline answer: the message, with the headers of the call it answers (connect sends the answer's, not the call's). */
interface DeadlineAnswer {
  message: Record<string, unknown>;
  header: Headers;
  trailer: Headers;
}

/** Has the call of ctx answer message at its deadline in place of DEADLINE_EXCEEDED; undefined, none. */
export function answerAtDeadline(ctx: HandlerContext, message: Record<string, unknown> | undefined): void {
  ctx.values.set(deadlineAnswerKey, message && { message, header: ctx.responseHeader, trailer: ctx.responseTrailer });
}

/** How long before a caller's deadline a call answers (a tenth of it, at most 200 ms): for its answer to reach the caller in time. */
const ANSWER_MARGIN_MS = 200;

/** The time a call given callerMs until its caller's deadline has for its work, to answer in time. */
export const answerWithinMs = (callerMs: number) => Math.max(1, callerMs - Math.min(ANSWER_MARGIN_MS, Math.floor(callerMs / 10)));

/**
 * Answers a unary call at its deadline, not when its handler returns
 * (Connect's connect-timeout-ms, gRPC's grpc-timeout), with DEADLINE_EXCEEDED.
 *
 * connect-es aborts the handler context's signal at the deadline but still awaits the handler,
 * so a call waiting on a frozen database answered only when the database did, however short
 * its deadline. The handler's writes heed the same signal and do not commit after it
 * (persistence/call-signal.ts), but a COMMIT already sent (a one-statement write is its own) may still land: the outcome is then
 * unknown to the client, which retries with the same request id, and writes are idempotent by
 * request id. A call with a deadlineAnswerKey answers that instead. Streams (replication streams,
 * Health/Watch) are left alone: they end on their signal themselves.
 */
export function createDeadlineInterceptor(): Interceptor {
  return (next) => async (req) => {
    // A call without a deadline (most clients' writes) costs nothing more on the hot path.
    if (req.stream || !(req.header.has("connect-timeout-ms") || req.header.has("grpc-timeout"))) return next(req);
    const { signal } = req;
    const passed = () => ConnectError.from(signal.reason).code === Code.DeadlineExceeded;
    const late = () => {
      const text = req.contextValues.get(deadlineTextKey);
      return text ? new ConnectError(text, Code.DeadlineExceeded) : ConnectError.from(signal.reason);
    };
    if (signal.aborted && passed()) throw late();
    let onAbort: (() => void) | undefined;
    // Only the deadline: a call its client left (a puller's long poll it no longer needs) or
    // that this server's stop ended is answered by its handler, which ends on the signal.
    const aborted = new Promise<UnaryResponse>((resolve, reject) => {
      onAbort = () => {
        if (!passed()) return;
        const answer = req.contextValues.get(deadlineAnswerKey);
        if (!answer) return reject(late());
        resolve({ stream: false, service: req.service, method: req.method, header: answer.header, trailer: answer.trailer, message: create(req.method.output, answer.message) });
      };
      signal.addEventListener("abort", onAbort, { once: true });
    });
    try {
      return await Promise.race([next(req), aborted]);
    } finally {
      signal.removeEventListener("abort", onAbort!);
    }
  };
}
