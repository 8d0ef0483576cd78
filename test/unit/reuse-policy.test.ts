import { expect, test } from "bun:test";
import { WorkflowIdReusePolicy as P, type Payloads } from "../../src/gen/tern/common/v1/common_pb";
import { onOpenRun, reuseRefusal, terminateForNewRun } from "../../src/history/reuse-policy";
import { unjson } from "../support/payload";

test.each([
  [P.ALLOW_DUPLICATE, undefined, true],
  [P.ALLOW_DUPLICATE, "COMPLETED", true],
  [P.UNSPECIFIED, "COMPLETED", true],
  [P.ALLOW_DUPLICATE_FAILED_ONLY, "COMPLETED", false],
  [P.ALLOW_DUPLICATE_FAILED_ONLY, "FAILED", true],
  [P.ALLOW_DUPLICATE_FAILED_ONLY, "TERMINATED", true],
  [P.ALLOW_DUPLICATE_FAILED_ONLY, "TIMED_OUT", true],
  [P.REJECT_DUPLICATE, undefined, true],
  [P.REJECT_DUPLICATE, "FAILED", false],
] as const)("policy %p after %p allows: %p", (policy, previous, allowed) => {
  expect(reuseRefusal(policy, previous) === undefined).toBe(allowed);
});

test.each([
  [P.TERMINATE_IF_RUNNING, undefined, true],
  [P.TERMINATE_IF_RUNNING, "COMPLETED", true],
  [P.TERMINATE_IF_RUNNING, "FAILED", true],
] as const)("terminate-if-running with no run open is allow-duplicate: after %p", (policy, previous) => {
  expect(reuseRefusal(policy, previous)).toBeUndefined();
});

test.each([
  [P.TERMINATE_IF_RUNNING, false, "terminate"],
  [P.TERMINATE_IF_RUNNING, true, "terminate"],
  [P.UNSPECIFIED, false, "refuse"],
  [P.ALLOW_DUPLICATE, false, "refuse"],
  [P.REJECT_DUPLICATE, false, "refuse"],
  [P.UNSPECIFIED, true, "signal"],
  [P.ALLOW_DUPLICATE_FAILED_ONLY, true, "signal"],
  [P.REJECT_DUPLICATE, true, "signal"],
] as const)("on an open run, policy %p with signal-with-start %p: %p", (policy, signalWithStart, action) => {
  expect(onOpenRun(policy, signalWithStart)).toBe(action);
});

test("terminate-if-running's terminate is Temporal's: its reason, the history service's identity, the new run in the details", () => {
  const { status, events } = terminateForNewRun("R2");
  const a = events[0]!.attributes as unknown as { value: { reason: string; identity: string; details: Payloads } };
  expect([status, a.value.reason, a.value.identity, unjson(a.value.details)]).toEqual([
    "TERMINATED", "TerminateIfRunning WorkflowIdReusePolicy Policy", "history-service", "terminated by new runID: R2",
  ]);
});
