import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { codeFromHttpStatus, parseContentType } from "@connectrpc/connect/protocol-connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { loggableError, unavailable } from "../errors";
import { abortableFetch } from "./abortable-fetch";
import { fetchFailureReason } from "../fetch-failure";
import { BackfillService } from "../gen/tern/admin/v1/backfill_pb";
import { AdminService } from "../gen/tern/admin/v1/service_pb";
import { OperatorService } from "../gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../gen/tern/workflow/v1/service_pb";

/** Clients of one remote cluster's frontend. */
export interface RemoteClients {
  baseUrl: string;
  operator: Client<typeof OperatorService>;
  admin: Client<typeof AdminService>;
  backfill: Client<typeof BackfillService>;
  workflow: Client<typeof WorkflowService>;
}

/** "host:port" or a URL, as a base URL. */
export function frontendUrl(address: string): string {
  const a = address.trim();
  return /^https?:\/\//.test(a) ? a.replace(/\/+$/, "") : `http://${a}`;
}

/**
 * A peer's call that got no answer (a connection refused or reset, a name that does not
 * resolve: Connect's UNKNOWN, which a tern never answers) as UNAVAILABLE naming the cluster, so
 * callers retry; the peer's own answers pass unchanged.
 */
export function peerUnreachable(e: unknown, cluster: string): unknown {
  return e instanceof ConnectError && e.code === Code.Unknown ? unavailable(`${peerFailureSentence(e, cluster)}; retry`) : e;
}

/**
 * What a peer's UNKNOWN failure says happened: "cannot reach cluster X: ..." for a call that got
 * no answer, or what it answered where something in front of it (a proxy) answered in its place.
 */
export function peerFailureSentence(e: unknown, cluster: string): string {
  const answered = notTernAnswer(e);
  return answered ? `cluster ${cluster} ${answered}` : `cannot reach cluster ${cluster}: ${peerFailureText(e)}`;
}

/** "answered, but not as a tern frontend: HTTP 500 ..." for a failure something in front of a peer answered (NotConnectAnswer); undefined for any other. */
export function notTernAnswer(e: unknown): string | undefined {
  const answer = (e as { cause?: unknown } | undefined)?.cause;
  return answer instanceof NotConnectAnswer ? `answered, but not as a tern frontend: ${answer.message}` : undefined;
}

/**
 * Why a call to cluster failed, for this cluster's status and log lines: plain words for a call
 * that got no answer, the error's own text else, after "clusterB answered: " where the tern there
 * answered it (its database down, say, which said bare read as this cluster's own).
 */
export function remoteFailureText(cluster: string, e: unknown): string {
  const text = fetchFailureReason(e) ?? loggableError(e);
  return ternAnswered(e) ? `${cluster} answered: ${text}` : text;
}

/** Whether e is an error a tern answered (each of its answers carries x-request-id), not the call's own (its timeout) nor a proxy's in its place. */
function ternAnswered(e: unknown): boolean {
  return e instanceof ConnectError && e.metadata.has("x-request-id") && notTernAnswer(e) === undefined;
}

/** An error answer that is not Connect's (a proxy's bare HTTP 500 page): its status and a short excerpt. */
export class NotConnectAnswer extends Error {
  override name = "NotConnectAnswer";
}

/** The most of a non-Connect answer's body an error quotes. */
const EXCERPT_CHARS = 120;

/**
 * fetchImpl, failing an answer that is not Connect's (a proxy's own page, a web server's: no
 * Connect body or content type) with NotConnectAnswer naming the status and a short excerpt.
 * Where connect would read it as UNKNOWN or INTERNAL (a bare 500 or 400, a 200 web page) the
 * NotConnectAnswer is thrown, which connect reads as UNKNOWN too (a bare 400 it read as INTERNAL,
 * which forward() passes on as the active cluster's own logged failure). A status connect maps
 * to another code (404, 502, 503, ...) keeps that code and connect's message ("HTTP 502"), the
 * NotConnectAnswer its cause: forwarding passes it on as before, and an upsert names what answered.
 */
function withAnswerExcerpts(fetchImpl: typeof fetch): typeof fetch {
  return (async (input: RequestInfo | URL, init?: RequestInit) => {
    const res = await fetchImpl(input, init);
    const type = res.headers.get("content-type");
    if (res.ok ? parseContentType(type) !== undefined : type?.startsWith("application/json")) return res;
    const answer = new NotConnectAnswer(`HTTP ${res.status}${await excerptOf(res)}`);
    const code = res.ok ? Code.Unknown : codeFromHttpStatus(res.status);
    if (code === Code.Unknown || code === Code.Internal) throw answer;
    throw new ConnectError(`HTTP ${res.status}`, code, res.headers, undefined, answer);
  }) as typeof fetch;
}

/** ' "<start of the body>..."', or " with no body"; read no further than the excerpt needs (a 200 at a wrong address may be a download). */
async function excerptOf(res: Response): Promise<string> {
  let body = "";
  const reader = res.body?.getReader();
  const decoder = new TextDecoder();
  try {
    while (reader && body.length <= EXCERPT_CHARS * 4) {
      const { done, value } = await reader.read();
      if (done) break;
      body += decoder.decode(value, { stream: true });
    }
  } catch {
    // What was read is the excerpt.
  } finally {
    void reader?.cancel().catch(() => {});
  }
  body = body.replace(/\s+/g, " ").trim();
  const excerpt = body.length > EXCERPT_CHARS ? `${body.slice(0, EXCERPT_CHARS)}...` : body;
  return excerpt ? ` ${JSON.stringify(excerpt)}` : " with no body";
}

/** Why a call to a peer failed, for an operator: plain words for a fetch that got no answer, else the error's own message. */
export function peerFailureText(e: unknown): string {
  return fetchFailureReason(e) ?? (e instanceof ConnectError ? e.rawMessage : (e as Error)?.message ?? String(e));
}

/** Why address is neither host:port nor an http(s) URL with a host; undefined when it is one. */
export function frontendAddressProblem(address: string): string | undefined {
  const a = address.trim();
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(a)?.[1];
  if (scheme && !/^https?$/i.test(scheme)) return `scheme ${scheme} is not supported (use host:port, or an http or https URL)`;
  // The URL parser drops a tab or line break inside one (http://peer\t1:7233 reached peer1:7233)
  // and fetch refused other controls: UNAVAILABLE ("cannot reach"), which a caller retries for good.
  const control = /[\u0000-\u001f\u007f]/.exec(a)?.[0];
  if (control) return `has a control character (U+${control.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}) in it`;
  let url: URL;
  try {
    url = new URL(frontendUrl(a));
  } catch {
    return "is not host:port or an http(s) URL (a port must be 0-65535)";
  }
  if (!url.hostname) return "names no host";
  // A bare host went to port 80 (http://host), refused as "cannot reach": tctl's and the CLI's host:port has a port.
  if (!scheme && !/^(\[[^\]]*\]|[^/:?#\[]*):\d/.test(a)) {
    // The host again in the example only if it is one (a DNS name is 253 characters at most): a client's megabyte of it was quoted whole.
    const example = `${url.hostname.length <= 253 ? url.hostname : "host"}:7233`;
    return `names no port: give host:port (${example} for tern's default), or an http(s) URL, which is taken at its scheme's port`;
  }
  // Bun's fetch sent them, Node's refuses them; kept, they showed in cluster list, errors and logs.
  if (url.username || url.password) return "has a user or password in it: tern sends no credentials to a peer, and the address shows in cluster list and the logs";
  return undefined;
}

/**
 * The host name a base URL is looked up as where that is not the one written: a host beyond ASCII
 * as its IDNA (punycode) name, `héllo` as `xn--hllo-bpa`, fullwidth letters as ASCII ones, an
 * IPv4 address written in hex as dotted decimals. Undefined where it is the one written.
 */
export function lookedUpHost(baseUrl: string): string | undefined {
  const written = /^https?:\/\/(\[[^\]]*\]|[^/:?#]*)/i.exec(baseUrl)?.[1]?.toLowerCase();
  let host: string;
  try {
    host = new URL(baseUrl).hostname;
  } catch {
    return undefined;
  }
  return written === undefined || written === host ? undefined : host;
}

/** Creates clients for each address once and reuses them (web-standard fetch transport, its calls ended by their signals: abortable-fetch.ts). */
export function createRemoteClientPool(fetchImpl: typeof fetch = globalThis.fetch) {
  const pool = new Map<string, RemoteClients>();
  return {
    get(address: string): RemoteClients {
      const baseUrl = frontendUrl(address);
      let c = pool.get(baseUrl);
      if (!c) {
        const transport = createConnectTransport({ baseUrl, useBinaryFormat: true, fetch: withAnswerExcerpts(abortableFetch(fetchImpl)) });
        c = {
          baseUrl,
          operator: createClient(OperatorService, transport),
          admin: createClient(AdminService, transport),
          backfill: createClient(BackfillService, transport),
          workflow: createClient(WorkflowService, transport),
        };
        pool.set(baseUrl, c);
      }
      return c;
    },
  };
}

export type RemoteClientPool = ReturnType<typeof createRemoteClientPool>;
