import { Code, ConnectError } from "@connectrpc/connect";

/** A certificate this machine does not trust, and how to trust it: Bun reads NODE_EXTRA_CA_CERTS at start, as Node does. */
const untrusted = (what: string, which: string) => `its TLS handshake failed: ${what}; to trust ${which}, name its PEM file in the environment variable NODE_EXTRA_CA_CERTS`;
const unknownCa = untrusted("its certificate is signed by a CA this machine does not trust", "that CA");

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
  // Most often an https:// address where the server speaks plain HTTP (tern itself does: TLS is a
  // proxy's in front of it), but a TLS server this machine shares no protocol version or cipher with fails so too.
  EPROTO: "its TLS handshake failed: does the server there speak TLS? tern itself serves http://",
  // A certificate that fails verification (Node's and Bun's codes), as Bun's raw text said it: 'unknown: self signed certificate'.
  DEPTH_ZERO_SELF_SIGNED_CERT: untrusted("its certificate is self-signed", "it"),
  SELF_SIGNED_CERT_IN_CHAIN: untrusted("its certificate's chain ends in a CA this machine does not trust", "that CA"),
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: unknownCa,
  UNABLE_TO_GET_ISSUER_CERT: unknownCa,
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: unknownCa,
  CERT_HAS_EXPIRED: "its TLS handshake failed: its certificate has expired",
  CERT_NOT_YET_VALID: "its TLS handshake failed: its certificate is not valid yet (is this machine's clock right?)",
  ERR_TLS_CERT_ALTNAME_INVALID: "its TLS handshake failed: its certificate does not name the address's host",
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
