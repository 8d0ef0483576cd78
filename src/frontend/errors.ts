import { Code, ConnectError } from "@connectrpc/connect";
import { connectionLost, connectionLostReason, databaseBusy, INSUFFICIENT_PRIVILEGE, loggableError, loggableStack, pgErrorOf, TernError, type ErrorKind } from "../errors";
import type { Logger } from "../observability/log";

/** The one table from domain error kinds to Connect codes. */
export const CODE_OF: Record<ErrorKind, Code> = {
  not_found: Code.NotFound,
  already_exists: Code.AlreadyExists,
  invalid_argument: Code.InvalidArgument,
  failed_precondition: Code.FailedPrecondition,
  resource_exhausted: Code.ResourceExhausted,
  unavailable: Code.Unavailable,
  internal: Code.Internal,
};

/**
 * Maps any error to a ConnectError for the caller. Domain errors keep their message; a lost
 * database connection, or a database that cannot run the request now (databaseBusy), is
 * UNAVAILABLE; anything else is INTERNAL. Those carry the request id and are logged, never
 * SQL text or the database's address (a busy database's answer names PostgreSQL's code and
 * message).
 */
export function toConnectError(e: unknown, requestId: string, log: Logger): ConnectError {
  if (e instanceof TernError) {
    const err = new ConnectError(e.message, CODE_OF[e.kind], new Headers(e.headers));
    // A peer's details (a forwarded call's answer) as they came: connect encodes them as it got them.
    err.details.push(...e.details);
    return err;
  }
  if (e instanceof ConnectError) {
    // Errors connect raised itself (bad request encoding, deadline, a forwarded call): safe to pass.
    if (e.code !== Code.Internal && e.code !== Code.Unknown) return e;
  }
  const db = pgErrorOf(e);
  if (db.code?.startsWith(DATA_EXCEPTION)) {
    // A value the database cannot store (a NUL in a text, a number or time out of its type's
    // range): the request's doing, and its write rolled back. The database's message names the
    // value's problem, not the statement.
    log.warn("request refused by the database's value checks", { requestId, error: loggableStack(e) });
    return new ConnectError(`a value in the request cannot be stored: ${db.message ?? db.code}`, Code.InvalidArgument);
  }
  if (connectionLost(e)) {
    // Retryable, and said without the database's address, but with PostgreSQL's reason where it
    // gave one (no free slot, the database gone). Logged without the statement, its parameters
    // or a stack: an outage logs it for every request.
    log.warn("database connection lost", { requestId, error: loggableError(e) });
    const reason = connectionLostReason(e);
    return new ConnectError(`the database connection was lost or refused (${reason ? `${reason}; ` : ""}request id ${requestId}); retry`, Code.Unavailable);
  }
  const busy = databaseBusy(e);
  if (busy) {
    // Retryable: the write rolled back, and the same request may go through later. PostgreSQL's
    // message for these names the condition ("canceling statement due to statement timeout",
    // "cannot execute INSERT in a read-only transaction"), not the values.
    log.warn("database could not run the request now", { requestId, error: loggableError(e) });
    return new ConnectError(`the database could not run the request now (${busy.code}: ${busy.message ?? "no message"}${settingOf(busy)}; request id ${requestId}); retry`, Code.Unavailable);
  }
  log.error("internal error", { requestId, error: loggableStack(e) });
  return new ConnectError(`internal error (request id ${requestId})`, Code.Internal);
}

/** For a statement or lock timeout, the settings that set it; for a privilege refused, whose it is: an operator's doing, not a fault of the request. */
function settingOf(busy: { code: string; message?: string }): string {
  if (busy.code === INSUFFICIENT_PRIVILEGE) return ", a privilege tern's database role lacks";
  if (busy.code === "57014" && busy.message?.includes("statement timeout")) {
    return ", over persistence.datastore.postgres.statementTimeoutMs (or PostgreSQL's statement_timeout where that is 0)";
  }
  // 55P03 also answers a NOWAIT lock refused at once; only the timeout's message names a setting.
  if (busy.code === "55P03" && busy.message?.includes("lock timeout")) {
    return ", over persistence.datastore.postgres.lockTimeoutMs (or PostgreSQL's lock_timeout where that is 0)";
  }
  return "";
}

/** PostgreSQL's class 22, "data exception": a value that does not fit its column or type. */
const DATA_EXCEPTION = "22";
