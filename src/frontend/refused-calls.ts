import { Code, ConnectError, createContextKey, createContextValues, type ConnectRouter } from "@connectrpc/connect";
// Among connect's private exports: fine under package.json's exact version pin, as connect asks.
import { createAsyncIterable, readAllBytes, type UniversalHandler, type UniversalServerRequest, type UniversalServerResponse } from "@connectrpc/connect/protocol";
import { codeFromHttpStatus, errorFromJsonBytes } from "@connectrpc/connect/protocol-connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import { trailerParse } from "@connectrpc/connect/protocol-grpc-web";
import { ulid } from "ulid";
import type { Metrics } from "../observability/metrics";
import { shown } from "../shown";
import type { CallFailures } from "./call-failures";

/** One call as watchRefusals sees it: its request id, and whether tern's interceptors ran for it. */
export interface CallRecord {
  requestId: string;
  intercepted: boolean;
}

/** The longest x-request-id of a caller's that a call takes as its own: past it, its header and every log line of it carried the whole (up to the header limit, kilobytes). */
export const MAX_CALLER_REQUEST_ID = 128;

/** The request id of a call: the caller's x-request-id, where it has one of at most MAX_CALLER_REQUEST_ID characters, else a new ULID. */
export function requestIdOf(callerId: string | null | undefined): string {
  return callerId && callerId.length <= MAX_CALLER_REQUEST_ID ? callerId : ulid();
}

/** The CallRecord of the call being handled, set by watchRefusals, marked by the frontend interceptor. */
export const callRecordKey = createContextKey<CallRecord | undefined>(undefined, { description: "tern call record" });

/**
 * routes with each handler watched for the calls connect answers before any interceptor runs:
 * a unary request whose body is no protobuf message (binary or JSON), a bad compression or
 * timeout header. Those left no log line, metric or request id. Each now gets a request id (the
 * caller's x-request-id, or a new one: the interceptor takes the same for the calls it sees), sent
 * back in the x-request-id header, and is counted (service_requests, service_errors,
 * service_latency) and logged, rate-limited, as the interceptor does a failed call.
 */
export function watchRefusals(
  routes: (router: ConnectRouter) => void,
  { metrics, failures }: { metrics: Metrics; failures: CallFailures },
): (router: ConnectRouter) => void {
  const watch = (handler: UniversalHandler): UniversalHandler => {
    const watched = async (req: UniversalServerRequest): Promise<UniversalServerResponse> => {
      const started = performance.now();
      const call: CallRecord = { requestId: requestIdOf(req.header.get("x-request-id")), intercepted: false };
      const res = await handler({ ...req, contextValues: (req.contextValues ?? createContextValues()).set(callRecordKey, call) });
      if (call.intercepted) return res;
      const labels = { operation: handler.method.name, namespace: "" };
      const { response, error } = await refusalOf(res);
      response.header = new Headers(response.header);
      response.header.set("x-request-id", call.requestId);
      metrics.inc("service_requests", labels);
      failures.refused(error, call.requestId, labels);
      metrics.observe("service_latency", labels, (performance.now() - started) / 1000);
      return response;
    };
    return Object.assign(watched, handler);
  };
  return (router) => {
    routes(router);
    router.handlers.forEach((h, i) => (router.handlers[i] = watch(h)));
  };
}

/** The labels of a call to a procedure this build does not serve: one series for all, as a caller may send any path (the log line names it). */
export const UNSERVED_LABELS = { operation: "_unknown_", namespace: "" };

/** Refuses a call to the procedure at path: its request id (the caller's, or a new one) and the error it is answered. */
export type RefuseUnserved = (path: string, callerRequestId: string | null | undefined) => { requestId: string; error: ConnectError };

/**
 * How a call to a procedure this build does not serve (a newer peer's, or a path made up),
 * which no handler sees, is refused on every listener: given a request id and counted and
 * logged as a refused call, under UNSERVED_LABELS.
 */
export function createRefuseUnserved({ metrics, failures }: { metrics: Metrics; failures: CallFailures }): RefuseUnserved {
  return (path, callerRequestId) => {
    const requestId = requestIdOf(callerRequestId);
    const error = new ConnectError(unservedMessage(path), Code.Unimplemented);
    metrics.inc("service_requests", UNSERVED_LABELS);
    failures.refused(error, requestId, UNSERVED_LABELS);
    metrics.observe("service_latency", UNSERVED_LABELS, 0);
    return { requestId, error };
  };
}

/**
 * Why no procedure answers at path. A procedure's path under a prefix (`--address HOST:PORT/foo`
 * sent straight to tern) is named as such: "not served by this tern version" blamed the server.
 */
function unservedMessage(path: string): string {
  const prefixed = /^(\/.*?)(\/[\w.]+\.\w+\/\w+)$/.exec(path);
  if (prefixed) {
    const [, prefix, procedure] = prefixed;
    return `no procedure at ${shown(path)}: tern serves its procedures at the root of its address (${shown(procedure!)}), not under ${shown(prefix!)}; a path in an address is for a proxy in front of tern that strips it`;
  }
  return `procedure ${shown(path.replace(/^\//, ""))} is not served by this tern version`;
}

/**
 * True for a request to a procedure this build does not serve: any POST, or a path shaped as
 * /package.Service/Method. Connect's answer to such a call is code unimplemented (how a newer
 * peer detects an older one) on HTTP 404, which gRPC and gRPC-web clients read as UNIMPLEMENTED too.
 */
export function rpcPath(method: string | undefined, path: string): boolean {
  return method === "POST" || /^\/[\w.]+\.\w+\/\w+$/.test(path);
}

/**
 * The error connect answered a call with, read from its answer in whichever protocol: a gRPC
 * trailer, a gRPC-web trailer frame (the whole body, as nothing ran), a Connect JSON error, or
 * a bare HTTP status (a method or content type connect does not take). The answer is returned
 * whole, its body read into one chunk where it had to be read.
 */
async function refusalOf(res: UniversalServerResponse): Promise<{ response: UniversalServerResponse; error: ConnectError }> {
  const bare = new ConnectError(`HTTP ${res.status}`, codeFromHttpStatus(res.status));
  const trailerError = res.trailer && findTrailerError(res.trailer);
  if (trailerError) return { response: { ...res }, error: trailerError };
  if (!res.body) return { response: { ...res }, error: bare };
  const body = await readAllBytes(res.body, Number.POSITIVE_INFINITY);
  const response = { ...res, body: createAsyncIterable([body]) };
  const type = new Headers(res.header).get("content-type") ?? "";
  try {
    if (type.startsWith("application/grpc-web")) {
      // One frame: a flags byte (the trailer's is 0x80), its length, the trailer's text.
      const trailer = trailerParse(body.subarray(5, 5 + new DataView(body.buffer, body.byteOffset).getUint32(1)));
      return { response, error: findTrailerError(trailer) ?? bare };
    }
    return { response, error: errorFromJsonBytes(body, undefined, bare) };
  } catch {
    return { response, error: new ConnectError(`HTTP ${res.status}, an answer tern could not read`, Code.Unknown) };
  }
}
