import { Code, ConnectError } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { fetchFailureReason } from "../fetch-failure";
import { withoutPassword } from "../shown";

/** A mistake on the command line: exit code 2 and a hint to --help. */
export class UsageError extends Error {
  override name = "UsageError";
  /** more: lines printed under the error line, before the hint (the commands a mistyped one may have meant). */
  constructor(message: string, readonly more?: string) {
    super(message);
  }
}

/** A failure the user should read as-is: exit code 1, no stack. */
export class CliError extends Error {
  override name = "CliError";
}

/** Exit codes: 0 ok, 1 failure, 2 usage, 130 interrupted (Ctrl-C). */
export const ExitCode = { ok: 0, failure: 1, usage: 2, interrupted: 130 } as const;

/**
 * Why the answer at --address is not tern's: a reply that is not HTTP/1.1 (the native gRPC
 * port speaks HTTP/2 only), a bare HTTP 404 (a tern answers an unknown path with a Connect
 * error of its own), a success that is not protobuf (a web page: tern answers the CLI's calls
 * application/proto) or a redirect (tern sends none); undefined for anything else.
 */
function notTernReason(err: ConnectError): string | undefined {
  const cause = err.cause as { code?: unknown } | undefined;
  if (err.code === Code.Unknown && (cause?.code === "Malformed_HTTP_Response" || err.rawMessage.startsWith("Malformed_HTTP_Response"))) return "its answer is not HTTP/1.1";
  if (err.code === Code.Unimplemented && /^HTTP 404\b/.test(err.rawMessage)) return "it answered HTTP 404";
  const contentType = /^unsupported content type (.*)$/.exec(err.rawMessage)?.[1];
  if (contentType !== undefined && (err.code === Code.Unknown || err.code === Code.Internal)) return `it answered ${contentType || "no content type"}, not Connect's application/proto`;
  if (cause?.code === "UnexpectedRedirect") return "it answered with a redirect";
  return undefined;
}

/** The one stderr line for an error, e.g. `error: not_found: namespace orders not found`. */
export function formatError(err: unknown, given: string): string {
  // An --address with a user and password (a proxy's) is named without the password.
  const address = withoutPassword(given);
  if (err instanceof ConnectError) {
    const notTern = notTernReason(err);
    if (notTern) return `error: ${address} is not tern's Connect port (${notTern}); --address takes services.frontend.rpc.port, not the gRPC port`;
    const net = fetchFailureReason(err);
    if (net) return `error: cannot reach tern at ${address} (${net})`;
    return `error: ${codeToString(err.code)}: ${firstLine(err.rawMessage) || "(no message)"}`;
  }
  if (err instanceof Error) {
    if (err.name === "DataDirLockedError") {
      return `error: ${firstLine(err.message)}; stop the tern server using it first`;
    }
    return `error: ${firstLine(err.message) || err.name}`;
  }
  return `error: ${String(err)}`;
}

/** The hint printed under a usage error. */
export function usageHint(commandPath: readonly string[]): string {
  return `(run '${["tern", ...commandPath].join(" ")} --help' for usage)`;
}

/**
 * Why a call's connection was lost after the server had it (reset or closed: the server killed
 * or restarted while it ran), when err says so; undefined for anything else, a refused
 * connection (nothing started) included. What such a call did is not known from its answer.
 */
export function lostMidCall(err: unknown): string | undefined {
  const reason = fetchFailureReason(err);
  return reason === "connection reset" || reason === "connection closed" ? reason : undefined;
}

/** True when err comes from an aborted call (Ctrl-C). */
export function isAbort(err: unknown): boolean {
  if (err instanceof ConnectError) return err.code === Code.Canceled;
  return err instanceof Error && err.name === "AbortError";
}

function firstLine(text: string): string {
  return text.split("\n")[0]!.trim();
}
