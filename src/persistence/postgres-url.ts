/**
 * A PostgreSQL URL as tern takes it: checked before connecting (scheme, sslmode), split into
 * what postgres.js reads (a libpq-style host parameter, an IPv6 host), and shown without its
 * password.
 */
import { withoutPassword } from "../shown";

/**
 * url for postgres.js, and the host its libpq-style `host` query parameter names: a Unix
 * socket directory (`postgres://tern@localhost/tern?host=/var/run/postgresql`) or a host
 * name, which overrides the URL's. postgres.js reads a host only from the URL's authority or
 * its host option, and would send the parameter to the server as a setting, which refuses it.
 * An IPv6 address (`postgres://tern@[::1]:5432/tern`, or as the parameter) goes as a list of
 * one host with its port: postgres.js splits a host string at each colon (for `host:port`
 * lists), and looked up `[` as a host name.
 */
export function hostParameter(url: string): { url: string; host?: string | string[]; port?: number[] } {
  const q = url.indexOf("?");
  const params = new URLSearchParams(q < 0 ? "" : url.slice(q + 1));
  const named = params.get("host");
  params.delete("host");
  const rest = named === null ? url : url.slice(0, q) + (params.size ? `?${params}` : "");
  const host = named || bracketedHost(rest);
  if (!host) return { url: rest };
  if (!host.includes(":")) return { url: rest, host };
  return { url: rest, host: [host], port: [Number(parsedUrl(rest)?.port || 5432)] };
}

/** The URL's IPv6 host without its brackets, or undefined. */
function bracketedHost(url: string): string | undefined {
  const hostname = parsedUrl(url)?.hostname ?? "";
  return hostname.startsWith("[") ? hostname.slice(1, -1) : undefined;
}

function parsedUrl(url: string): URL | undefined {
  try {
    return new URL(url);
  } catch {
    return undefined;
  }
}

/** The URL without its password (in its authority or as a `password` parameter), for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    if (u.searchParams.has("password")) u.searchParams.set("password", "***");
    return u.toString();
  } catch {
    return "(unparseable url)";
  }
}

/** Refuses, naming the setting, a datastore URL that is not a postgres:// or postgresql:// URL. */
export function checkPostgresUrl(url: string): void {
  const setting = "the PostgreSQL URL (persistence.datastore.postgres.url, or TERN_DATABASE_URL)";
  let scheme: string;
  try {
    scheme = new URL(url).protocol;
  } catch {
    throw new Error(`${setting} is not a valid URL (a port over 65535, or a / ? or # in the password not percent-encoded, say): ${JSON.stringify(withoutPassword(url).replace(/password=[^&]*/g, "password=***"))}`);
  }
  if (scheme !== "postgres:" && scheme !== "postgresql:") throw new Error(`${setting} must start with postgres:// or postgresql://, not ${scheme}//`);
  // postgres.js takes any other word for TLS with the certificate checked: a typo (`requre`,
  // `disabel`) failed later as "Client network socket disconnected before secure TLS connection".
  const sslmode = new URL(url).searchParams.get("sslmode");
  // libpq's allow tries a plain connection first and TLS only if that is refused; postgres.js
  // takes it for TLS unchecked with no fallback, so a server without SSL failed as TLS began.
  if (sslmode === "allow") {
    throw new Error(`${setting} has sslmode=allow, which tern does not take: its driver goes straight to TLS there, with no plain connection first as libpq tries; use prefer (TLS where the server takes it, else plain), disable (plain) or require (TLS)`);
  }
  if (sslmode !== null && !SSL_MODES.includes(sslmode)) {
    throw new Error(`${setting} has sslmode=${sslmode}, which is none of ${SSL_MODES.join(", ")}`);
  }
}

/**
 * Where a connection asked for TLS (sslmode require or verify-*) ended in its handshake, the
 * likely reason: postgres.js goes on to TLS after the server said it takes none, where libpq
 * says "server does not support SSL, but SSL was required".
 */
export function tlsRefusedHint(e: Error): string {
  if (!/before secure TLS connection was established/.test(e.message)) return "";
  return " (the connection ended as TLS began: does the server take SSL? The URL's sslmode asks for it; prefer falls back to a plain connection)";
}

/** libpq's sslmode values tern takes (allow is refused above). */
const SSL_MODES = ["disable", "prefer", "require", "verify-ca", "verify-full"];
