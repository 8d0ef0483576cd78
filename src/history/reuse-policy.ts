import { WorkflowIdReusePolicy } from "../gen/tern/common/v1/common_pb";

/** Statuses that count as "failed" for allow-duplicate-failed-only (anything but success). */
const FAILED_LIKE = new Set(["FAILED", "CANCELED", "TERMINATED", "TIMED_OUT"]);

/**
 * Whether a new run may start for a workflow id whose latest run is closed with
 * previousStatus (undefined: no earlier run). Returns the refusal reason or undefined.
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
