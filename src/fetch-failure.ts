import { Code, ConnectError } from "@connectrpc/connect";

/** Plain words for the codes of a fetch that got no answer (Node's errno names, and Bun's). */
const REASONS: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ConnectionRefused: "connection refused",
  ENOTFOUND: "host not found",
  EAI_AGAIN: "host not found",
  ECONNRESET: "connection reset",
  ConnectionClosed: "connection closed",
  ETIMEDOUT: "connection timed out",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  // An https:// address where the server speaks plain HTTP (tern itself does: TLS is a proxy's in front of it).
  EPROTO: "its TLS handshake failed: nothing serves TLS there; tern itself serves http://",
  // The native gRPC port speaks HTTP/2 only.
  Malformed_HTTP_Response: "its answer is not HTTP/1.1 (a native gRPC port? tern's Connect port is services.frontend.rpc.port)",
};

/**
 * Why a call got no answer, in plain words, when err is connect's wrapper of a failed fetch
 * (UNKNOWN or UNAVAILABLE, with the fetch error as its cause); undefined for anything else, a
 * peer's own answers included. Bun's text for these ("Is the computer able to access the url?",
 * "pass `verbose: true` in the second argument to fetch()") speaks to the code that called
 * fetch, not to the operator who reads it.
 */
export function fetchFailureReason(err: unknown): string | undefined {
  if (!(err instanceof ConnectError) || (err.code !== Code.Unknown && err.code !== Code.Unavailable)) return undefined;
  const cause = err.cause as { code?: unknown; cause?: { code?: unknown } } | undefined;
  const code = cause?.code ?? cause?.cause?.code;
  return typeof code === "string" && Object.hasOwn(REASONS, code) ? REASONS[code] : undefined;
}
