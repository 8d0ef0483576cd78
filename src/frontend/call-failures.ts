import { Code, type ConnectError } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import type { Logger } from "../observability/log";
import type { Metrics } from "../observability/metrics";
import { createRepeatLog } from "../observability/repeat-log";
import { toConnectError } from "./errors";

/** The labels of a call's metrics: its method, and its namespace's label ("" for none). */
export interface CallLabels {
  operation: string;
  namespace: string;
}

/** How failed calls are counted (service_errors) and logged, the same for every path a call fails on. */
export interface CallFailures {
  /** The error as the caller gets it (toConnectError), with its request id; counted and logged. */
  failed(e: unknown, requestId: string, labels: CallLabels): ConnectError;
  /** Counts and logs a call that connect answered with err before tern's interceptors saw it. */
  refused(err: ConnectError, requestId: string, labels: CallLabels): void;
}

/**
 * Failures alike but for their request ids are logged once every 10 s, with how many they
 * stood for (createRepeatLog): a client that sends the same bad call in a loop is one line.
 */
export function createCallFailures({ metrics, log }: { metrics: Metrics; log: Logger }): CallFailures {
  const failures = createRepeatLog(log);
  const note = (msg: string, err: ConnectError, requestId: string, labels: CallLabels) => {
    metrics.inc("service_errors", { ...labels, code: Code[err.code] ?? String(err.code) });
    // The code by name, as the caller's answer and the CLI give it ("unavailable"), not its number.
    failures.info(msg, { requestId, operation: labels.operation, namespace: labels.namespace || undefined, code: codeToString(err.code), error: err.rawMessage });
  };
  return {
    failed(e, requestId, labels) {
      const err = toConnectError(e, requestId, failures);
      err.metadata.set("x-request-id", requestId);
      note("rpc failed", err, requestId, labels);
      return err;
    },
    refused: (err, requestId, labels) => note("rpc refused before its handler", err, requestId, labels),
  };
}
