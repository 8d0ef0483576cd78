import { Code, ConnectError } from "@connectrpc/connect";
import { TernError, type ErrorKind } from "../errors";
import type { Logger } from "../observability/log";

/** The one table from domain error kinds to Connect codes. */
export const CODE_OF: Record<ErrorKind, Code> = {
  not_found: Code.NotFound,
  already_exists: Code.AlreadyExists,
  invalid_argument: Code.InvalidArgument,
  failed_precondition: Code.FailedPrecondition,
  resource_exhausted: Code.ResourceExhausted,
  unavailable: Code.Unavailable,
};

/**
 * Maps any error to a ConnectError for the caller. Domain errors keep their message;
 * anything else is INTERNAL with only the request id (never SQL text), and is logged.
 */
export function toConnectError(e: unknown, requestId: string, log: Logger): ConnectError {
  if (e instanceof TernError) {
    return new ConnectError(e.message, CODE_OF[e.kind], new Headers(e.headers));
  }
  if (e instanceof ConnectError) {
    // Errors connect raised itself (bad request encoding, deadline, a forwarded call): safe to pass.
    if (e.code !== Code.Internal && e.code !== Code.Unknown) return e;
  }
  log.error("internal error", { requestId, error: String((e as Error)?.stack ?? e) });
  return new ConnectError(`internal error (request id ${requestId})`, Code.Internal);
}
