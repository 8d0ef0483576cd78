import { expect, test } from "bun:test";
import { WorkflowIdReusePolicy as P } from "../../src/gen/tern/common/v1/common_pb";
import { reuseRefusal } from "../../src/history/reuse-policy";

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
