import { UsageError } from "./errors";

/** Where the CLI talks to when --address is not given. */
export const DEFAULT_ADDRESS = "127.0.0.1:7233";
const DEFAULT_PORT = "7233";

/**
 * Turns --address into a base URL: `host:port` means `http://host:port`, a bare host
 * gets port 7233, and http(s) URLs are kept (without a trailing slash).
 */
export function normalizeAddress(address: string): string {
  const text = address.trim();
  if (text === "") throw new UsageError("--address is empty");
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new UsageError(`--address: "${address}" is not host:port or a URL${malformedBecause(text)}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new UsageError(`--address: scheme ${url.protocol} is not supported (use http or https)`);
  }
  if (url.port === "" && withScheme !== text) url.port = DEFAULT_PORT;
  return url.toString().replace(/\/+$/, "");
}

/** What is wrong with an address URL refused, where it is a common slip. */
function malformedBecause(text: string): string {
  if (/^[\da-f]*:[\da-f]*:/i.test(text)) return " (an IPv6 address goes in brackets: [::1]:7233)";
  const port = /:(\d+)\/?$/.exec(text)?.[1];
  return port !== undefined && Number(port) > 65535 ? ` (port ${port} is past 65535)` : "";
}
