/**
 * A PostgreSQL URL as tern takes it: checked before connecting (scheme, sslmode), split into
 * what postgres.js reads (a libpq-style host parameter, an IPv6 host), and shown without its
 * password.
 */
import { readFileSync } from "node:fs";
import { checkServerIdentity, type ConnectionOptions } from "node:tls";
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
  const { url: rest, taken } = takeParameters(url, ["host"]);
  const host = taken.host || bracketedHost(rest);
  if (!host) return { url: rest };
  if (!host.includes(":")) return { url: rest, host };
  return { url: rest, host: [host], port: [Number(parsedUrl(rest)?.port || 5432)] };
}

/** The URL without its query parameters `names`, and the values it had of those present (the URL as it was when none is). */
function takeParameters(url: string, names: string[]): { url: string; taken: Record<string, string> } {
  const q = url.indexOf("?");
  if (q < 0) return { url, taken: {} };
  const params = new URLSearchParams(url.slice(q + 1));
  const taken: Record<string, string> = Object.fromEntries(names.flatMap((k) => (params.has(k) ? [[k, params.get(k)!]] : [])));
  if (!Object.keys(taken).length) return { url, taken };
  for (const k of names) params.delete(k);
  return { url: url.slice(0, q) + (params.size ? `?${params}` : ""), taken };
}

/** The one host a URL (after hostParameter) connects to, or undefined for a list of them. */
export function oneHost(url: string, named?: string | string[]): string | undefined {
  const host = Array.isArray(named) ? (named.length === 1 ? named[0] : undefined) : named ?? parsedUrl(url)?.hostname;
  return host && !host.includes(",") ? host : undefined;
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
    for (const secret of ["password", "sslpassword"]) if (u.searchParams.has(secret)) u.searchParams.set(secret, "***");
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
 * says "server does not support SSL, but SSL was required"; or a certificate signed by a CA
 * of the operator's own, which the URL did not name.
 */
export function tlsRefusedHint(e: Error): string {
  if (/self.signed certificate|unable to get local issuer certificate|unable to verify the first certificate/i.test(e.message)) {
    return " (no CA this system trusts signed the server's certificate: name the file of the CA that did with sslrootcert=/path/ca.pem in the URL)";
  }
  if (!/before secure TLS connection was established/.test(e.message)) return "";
  return " (the connection ended as TLS began: does the server take SSL? The URL's sslmode asks for it; prefer falls back to a plain connection)";
}

/** libpq's sslmode values tern takes (allow is refused above). */
const SSL_MODES = ["disable", "prefer", "require", "verify-ca", "verify-full"];

/** libpq's parameters naming TLS files and the key's passphrase, which postgres.js does not read. */
const TLS_PARAMETERS = ["sslrootcert", "sslcert", "sslkey", "sslpassword"];

/** What postgres.js takes for TLS: its own sslmode words, or tls.connect's options. */
export type TlsOption = "prefer" | "require" | ConnectionOptions;

/**
 * The TLS of a URL whose sslmode is verify-ca or verify-full, or that names certificate files
 * (`sslrootcert`, `sslcert`, `sslkey`, `sslpassword`), as libpq makes it: the URL without those
 * parameters, and the option postgres.js takes for them. postgres.js sent the files' parameters
 * to the server as settings, which refused them ("unrecognized configuration parameter"), so a
 * server whose certificate a private CA signed (a cloud provider's, say) could not be verified;
 * and it checked the host name under verify-ca too, and an IP address host against "localhost"
 * under verify-full. Files are read here: one that cannot be read fails the start, naming it.
 * `host` is the one the connection goes to (identity checks need a single one).
 */
export function tlsParameters(url: string, host: string | undefined, read: (path: string) => Buffer = readFileSync): { url: string; ssl?: TlsOption } {
  const { url: rest, taken } = takeParameters(url, ["sslmode", ...TLS_PARAMETERS]);
  const { sslmode: named, ...files } = taken;
  if (!Object.keys(files).length && named !== "verify-ca" && named !== "verify-full") return { url };
  const setting = "the PostgreSQL URL";
  const { sslrootcert: root, sslcert: cert, sslkey: key, sslpassword: passphrase } = files;
  const mode = named ?? (root === "system" ? "verify-full" : undefined);
  if (root === "system" && mode !== "verify-full") {
    throw new Error(`${setting} has sslrootcert=system with sslmode=${mode}: the system's CAs are taken with verify-full only, as libpq does`);
  }
  if (mode === undefined || mode === "disable" || mode === "prefer") {
    throw new Error(`${setting} names ${Object.keys(files).join(", ")} with ${mode === undefined ? "no sslmode" : `sslmode=${mode}`}: set sslmode=require, verify-ca or verify-full for TLS with them`);
  }
  if ((cert === undefined) !== (key === undefined)) throw new Error(`${setting} names ${cert === undefined ? "sslkey without sslcert" : "sslcert without sslkey"}: a client certificate needs both`);
  const file = (name: string, path: string) => {
    try {
      return read(path);
    } catch (e) {
      throw new Error(`${setting}'s ${name} ${path} cannot be read: ${(e as Error).message}`);
    }
  };
  // As libpq: require with a root certificate verifies the chain as verify-ca does.
  const verify = mode === "verify-full" ? "full" : mode === "verify-ca" || root !== undefined ? "ca" : undefined;
  if (verify === "full" && !host) throw new Error(`${setting} has sslmode=verify-full with more than one host or none: tern checks the certificate against one`);
  return {
    url: rest,
    ssl: {
      ...(root !== undefined && root !== "system" && { ca: file("sslrootcert", root) }),
      ...(cert !== undefined && { cert: file("sslcert", cert), key: file("sslkey", key!) }),
      ...(passphrase !== undefined && { passphrase }),
      rejectUnauthorized: verify !== undefined,
      ...(verify !== "full" ? { checkServerIdentity: () => undefined } : { checkServerIdentity: (_: string, c: Parameters<typeof checkServerIdentity>[1]) => checkServerIdentity(host!, c) }),
    },
  };
}
