import { create } from "@bufbuild/protobuf";
import { PayloadsSchema, WorkflowIdReusePolicy } from "../gen/tern/common/v1/common_pb";
import type { Append } from "./writer";

/** Statuses that count as "failed" for allow-duplicate-failed-only (anything but success). */
const FAILED_LIKE = new Set(["FAILED", "CANCELED", "TERMINATED", "TIMED_OUT"]);

/**
 * Whether a new run may start for a workflow id whose latest run is closed with
 * previousStatus (undefined: no earlier run). Returns the refusal reason or undefined.
 * Terminate-if-running, with no run open, is allow-duplicate (as in Temporal).
 */
export function reuseRefusal(policy: WorkflowIdReusePolicy, previousStatus: string | undefined): string | undefined {
  if (previousStatus === undefined) return undefined;
  switch (policy) {
    case WorkflowIdReusePolicy.REJECT_DUPLICATE:
      return "the workflow id reuse policy is reject-duplicate and a run with this id already exists";
    case WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY:
      return FAILED_LIKE.has(previousStatus)
        ? undefined
        : `the workflow id reuse policy is allow-duplicate-failed-only and the previous run ended ${previousStatus}`;
    default:
      return undefined;
  }
}

/**
 * What a start does on meeting an open run of its workflow id: terminate it and start the new
 * run in the same transaction (terminate-if-running, SignalWithStart too, as Temporal's history
 * service does), signal it (SignalWithStart), or refuse (ALREADY_EXISTS).
 */
export function onOpenRun(policy: WorkflowIdReusePolicy, signalWithStart: boolean): "terminate" | "signal" | "refuse" {
  if (policy === WorkflowIdReusePolicy.TERMINATE_IF_RUNNING) return "terminate";
  return signalWithStart ? "signal" : "refuse";
}

/**
 * The terminate of the open run that terminate-if-running replaces by newRunId, in Temporal's
 * words (ApplyWorkflowIDReusePolicy in service/history/api): its reason, the history service's
 * identity, and the new run's id in the details as a json/plain string.
 */
export function terminateForNewRun(newRunId: string): Append {
  const details = create(PayloadsSchema, {
    payloads: [{ metadata: { encoding: utf8.encode("json/plain") }, data: utf8.encode(JSON.stringify(`terminated by new runID: ${newRunId}`)) }],
  });
  return {
    status: "TERMINATED",
    events: [{ attributes: { case: "workflowExecutionTerminatedEventAttributes", value: { reason: TERMINATE_IF_RUNNING_REASON, details, identity: HISTORY_SERVICE_IDENTITY } as never } }],
  };
}

/** The reason of terminate-if-running's terminate (Temporal's before its conflict policy took the name's "Policy" off). */
export const TERMINATE_IF_RUNNING_REASON = "TerminateIfRunning WorkflowIdReusePolicy Policy";
/** The identity Temporal's history service writes its own events under (consts.IdentityHistoryService). */
export const HISTORY_SERVICE_IDENTITY = "history-service";

const utf8 = new TextEncoder();
