import { ConnectError } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";

/** Domain errors; frontend/errors.ts maps each kind to one Connect code. */
export type ErrorKind =
  | "not_found"
  | "already_exists"
  | "invalid_argument"
  | "failed_precondition"
  | "resource_exhausted"
  | "unavailable"
  /** A peer's INTERNAL answer passed on (a forwarded call's): the peer logged it, not this cluster. */
  | "internal";

/** A detail of an error's answer (google.rpc.Status details): a message's schema and value, or a peer's as it came (type name and bytes). */
export type ErrorDetail = ConnectError["details"][number];

/** An error whose message is safe to show to the caller. */
export class TernError extends Error {
  override name = "TernError";
  constructor(
    readonly kind: ErrorKind,
    message: string,
    /** Extra response headers, e.g. retry hints. */
    readonly headers: Record<string, string> = {},
    /** Typed details for clients that read them, as Temporal's (errordetails). */
    readonly details: ErrorDetail[] = [],
  ) {
    super(message);
  }
}

export const notFound = (msg: string) => new TernError("not_found", msg);
export const alreadyExists = (msg: string) => new TernError("already_exists", msg);
export const invalidArgument = (msg: string) => new TernError("invalid_argument", msg);
export const failedPrecondition = (msg: string) => new TernError("failed_precondition", msg);
export const unavailable = (msg: string) => new TernError("unavailable", msg);
export const resourceExhausted = (msg: string, retryAfterMs: number) =>
  new TernError("resource_exhausted", `${msg}; retry after ${retryAfterMs}ms`, {
    "retry-after-ms": String(retryAfterMs),
  });

/**
 * Whether e, or an error it wraps (drizzle wraps the driver's as its cause), says the database
 * connection was lost or could not be made: postgres.js's connection errors (CONNECTION_CLOSED,
 * CONNECT_TIMEOUT, ...), a failed socket call (ECONNRESET, ECONNREFUSED: it names the system
 * call), or a FATAL or PANIC from the server, which ends the connection after one (a restart,
 * a failover, an operator's terminate). The request may be retried; what it wrote is either
 * committed whole or not at all.
 */
export function connectionLost(e: unknown): boolean {
  return lostConnectionOf(e) !== undefined;
}

/**
 * PostgreSQL's own reason for ending or refusing the connection e says was lost, as `code:
 * message` (a FATAL: 53300 no free slot, 3D000 the database renamed or dropped, 57P01 ended by
 * an operator); undefined for the driver's or a socket's error, whose message names the
 * database's address.
 */
export function connectionLostReason(e: unknown): string | undefined {
  const lost = lostConnectionOf(e);
  const { code, message } = lost ?? {};
  return typeof code === "string" && SQLSTATE.test(code) && typeof message === "string" ? `${code}: ${message}` : undefined;
}

/** A SQLSTATE: five digits or capital letters, as PostgreSQL's error codes are. */
const SQLSTATE = /^[0-9A-Z]{5}$/;

/** The error in e's cause chain that says the connection was lost (connectionLost), if any. */
function lostConnectionOf(e: unknown): ErrorFields | undefined {
  return causeChain(e).find(({ code, severity, syscall }) =>
    (typeof code === "string" && (code.startsWith("CONNECTION_") || code === "CONNECT_TIMEOUT")) ||
    typeof syscall === "string" || severity === "FATAL" || severity === "PANIC");
}

/**
 * An error's message for a log line. For a lost connection or a busy database (databaseBusy),
 * only the driver's code and message:
 * drizzle's wrapper carries the whole statement and every bound parameter (user payloads), and
 * an outage logs it for every request. A peer's answer reads as the CLI prints an error,
 * `failed_precondition: ...` (connect's message leads with the code in brackets: a replication
 * status showed `error: [failed_precondition] replication with cluster ...`).
 */
export function loggableError(e: unknown): string {
  const busy = databaseBusy(e);
  if (busy) return `${busy.code}: ${busy.message ?? "no message"}`;
  const lost = lostConnectionOf(e);
  if (!lost && e instanceof ConnectError) return `${codeToString(e.code)}: ${e.rawMessage}`;
  if (!lost) return withReason(e, withoutParameters((e as Error)?.message ?? String(e)));
  const message = typeof lost.message === "string" ? lost.message : "connection lost";
  return typeof lost.code === "string" && !message.includes(lost.code) ? `${lost.code}: ${message}` : message;
}

/**
 * An error's reason for a record an operator reads (a DLQ entry's last error): the database's
 * code and message where it refused a statement, else loggableError's text without the failed
 * statement (drizzle's "Failed query: ..." names it, and a row's values can be user payloads);
 * at most max characters.
 */
export function errorReason(e: unknown, max = 2000): string {
  const { code, message } = pgErrorOf(e);
  const text = code && message ? `${code}: ${message}` : loggableError(e).replace(/(^|\n)Failed query: [\s\S]*/, "");
  return (text || "a database statement failed").slice(0, max);
}

/**
 * An error's stack for a log line (its message where it has none), without the bound
 * parameters drizzle's message lists after the statement: they are user payloads (a signal's
 * input, a memo). A lost connection as loggableError says it.
 */
export function loggableStack(e: unknown): string {
  if (lostConnectionOf(e)) return loggableError(e);
  return withReason(e, withoutParameters(String((e as Error)?.stack ?? e)));
}

/**
 * e as a start that failed says it: a statement the database refused, as its code and reason.
 * drizzle's message names only the statement and its parameters (`Failed query: select ... for
 * update params: true` on a read-only database), and postgres.js's omits the code. An error of
 * tern's that wraps the database's (`migrating the database failed: ...`) says it already.
 */
export function startFailure(e: unknown, maxConnections: number): unknown {
  const { code, message } = pgErrorOf(e);
  if (code === TOO_MANY_CONNECTIONS) return new Error(noConnectionSlot(message, maxConnections), { cause: e });
  const own = (e as ErrorFields | undefined)?.code === code;
  if (!code || !message || !(own || String((e as Error)?.message).startsWith("Failed query"))) return e;
  return new Error(`the database refused a statement (${code}: ${message})`, { cause: e });
}

/** PostgreSQL's "too many connections": past max_connections, into its reserved slots, or past a role's or database's CONNECTION LIMIT. */
const TOO_MANY_CONNECTIONS = "53300";

/**
 * A start PostgreSQL refused a connection for want of a free slot, at the first connection or a
 * later one of the start's (its migrations' lock), as that and what to do: it said `the database
 * refused a statement (53300: ...)`, as a statement of tern's, or named only PostgreSQL's reason.
 */
function noConnectionSlot(message: string | undefined, maxConnections: number): string {
  return `the PostgreSQL server has no free connection slot for tern (53300: ${message ?? "too many connections"}): a tern server opens up to ` +
    `persistence.datastore.postgres.maxConnections (${maxConnections}) connections for its requests and 2 for replication applies, and one more at start ` +
    `(migrations) and per graceful failover; PostgreSQL allows max_connections less its reserved_connections and superuser_reserved_connections ` +
    `(for superusers only), and a role's or database's CONNECTION LIMIT. Raise the limit PostgreSQL names, end the sessions that hold its slots, ` +
    `or lower maxConnections; then start again`;
}

/** text led by the database's code and message where e wraps them (drizzle's message names only the statement). */
function withReason(e: unknown, text: string): string {
  const { code, message } = pgErrorOf(e);
  return code && message && !text.includes(message) ? `${code}: ${message}\n${text}` : text;
}

/** text without drizzle's "params: ..." (up to the stack's first frame). */
const withoutParameters = (text: string) => text.replace(/\nparams: [\s\S]*?(?=\n\s+at |$)/, "\nparams: (not logged)");

/** The database error code, constraint and message of a failed statement, from either driver. */
export function pgErrorOf(e: unknown): { code?: string; constraint?: string; message?: string } {
  const c = causeChain(e).find((c) => typeof c.code === "string" && SQLSTATE.test(c.code));
  return c ? { code: c.code as string, constraint: c.constraint ?? c.constraint_name, message: typeof c.message === "string" ? c.message : undefined } : {};
}

/**
 * The database's error, if e says the database could not run the statement now through no
 * fault of the statement: a statement or lock timeout (57014, 55P03: a lock held by another
 * transaction, an operator's cancel), a serialization failure or deadlock past the writer's
 * retries (40001, 40P01), a database that takes no writes (25006: a standby after a failover,
 * or `default_transaction_read_only`), one out of disk, memory or connections (class 53), or
 * a role that lacks a privilege on tern's tables (42501: revoked while the server runs; a start
 * checks them, privileges.ts), which an operator's grant mends as a read-only database's reset does.
 * The same statement may succeed later; what it wrote rolled back.
 */
export function databaseBusy(e: unknown): { code: string; message?: string } | undefined {
  const { code, message } = pgErrorOf(e);
  if (code && (BUSY_CODES.has(code) || code.startsWith(INSUFFICIENT_RESOURCES))) return { code, message };
  return undefined;
}

/** PostgreSQL's "permission denied" for a table, schema or function. */
export const INSUFFICIENT_PRIVILEGE = "42501";
const BUSY_CODES = new Set(["57014", "55P03", "40001", "40P01", "25006", INSUFFICIENT_PRIVILEGE]);
/** PostgreSQL's class 53, "insufficient resources": disk full, out of memory, too many connections. */
const INSUFFICIENT_RESOURCES = "53";

/** An error's fields the checks above read. */
interface ErrorFields {
  code?: unknown;
  severity?: unknown;
  syscall?: unknown;
  constraint?: string;
  constraint_name?: string;
  message?: unknown;
  cause?: unknown;
}

/** e and the errors it wraps as their cause (drizzle wraps the driver's), at most four deep. */
function causeChain(e: unknown): ErrorFields[] {
  const chain: ErrorFields[] = [];
  for (let cur = e; chain.length < 4 && cur && typeof cur === "object"; cur = (cur as ErrorFields).cause) chain.push(cur as ErrorFields);
  return chain;
}

/**
 * Why this build refuses a database: it holds count migrations this build does not know (a
 * downgrade). One wording for a server's start, `tern admin db migrate` and `tern admin db status`.
 */
export const schemaTooNewMessage = (count: number): string =>
  `the database schema is newer than this tern build: ${count} migration${count === 1 ? "" : "s"} applied to it ${count === 1 ? "is" : "are"} unknown to this build; upgrade tern`;

/** The cluster a NamespaceNotActiveError names, as a response header: a forwarding cluster reads it. */
export const ACTIVE_CLUSTER_HEADER = "x-tern-active-cluster";

/** A write reached a cluster that is passive for the namespace (DESIGN.md section 5). */
export class NamespaceNotActiveError extends TernError {
  override name = "NamespaceNotActiveError";
  constructor(
    readonly namespace: string,
    readonly activeCluster: string,
    /** The active cluster's frontend address, where this cluster knows it: its client can send the write there. */
    readonly activeAddress?: string,
    /** Why this cluster does not forward the call there (frontend/forwarding.ts), said last. */
    readonly why?: string,
  ) {
    const at = activeAddress ? `, whose frontend is at ${activeAddress}` : "";
    super("failed_precondition", `namespace ${namespace} is active in cluster ${activeCluster}${at}${why ? `; ${why}` : ""}`, { [ACTIVE_CLUSTER_HEADER]: activeCluster });
  }
}
