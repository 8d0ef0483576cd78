import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Whether a source's answer to a call says it does not serve that procedure (a tern from before
 * it): Connect's Unimplemented, or the not_found "no route for ..." that terns already deployed
 * answer an unknown path with (HTTP 404 with a Connect error body, which a unary call reads as NotFound).
 */
export function notServed(error: unknown): boolean {
  const { code, rawMessage } = ConnectError.from(error);
  return code === Code.Unimplemented || (code === Code.NotFound && rawMessage.startsWith("no route for "));
}
