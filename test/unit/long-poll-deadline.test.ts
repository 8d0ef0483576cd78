import { describe, expect, test } from "bun:test";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { createDeadlineInterceptor } from "../../src/frontend/deadline";
import { createWorkflowHandler } from "../../src/frontend/workflow-handler";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import type { HistoryQueries } from "../../src/history/queries";
import { encodeToken } from "../../src/persistence/page-token";

/** A frontend whose history reads stall past any deadline (a database frozen mid-read, a process that stalled). */
function stalledFrontend() {
  const queries = { getHistory: () => new Promise<never>(() => {}) } as unknown as HistoryQueries;
  const handler = createWorkflowHandler({ namespaces: {} as never, engine: {} as never, queries });
  const transport = createRouterTransport(({ service }) => service(WorkflowService, handler), { router: { interceptors: [createDeadlineInterceptor()] } });
  return createClient(WorkflowService, transport);
}

const token = encodeToken({ runId: "r1", next: 5, workflowId: "w1" });
// The deadline header alone: the server's answer at it, not a timer of the client's.
const atDeadline = { headers: { "connect-timeout-ms": "300" } };

describe("a history read whose work outlasts its deadline", () => {
  test("TestAHistoryLongPollStalledPastItsDeadlineAnswersAnEmptyPageWithItsToken", async () => {
    const page = await stalledFrontend().getWorkflowExecutionHistory({ namespace: "orders", execution: { workflowId: "w1" }, waitNewEvent: true, nextPageToken: token }, atDeadline);
    // Before: DEADLINE_EXCEEDED, "the operation timed out", for a wait that found nothing new.
    expect([page.history?.events ?? [], page.nextPageToken, page.runId]).toEqual([[], token, "r1"]);
  });

  test.each([
    ["a long poll from the first event (an empty page without a token says the history ends)", { waitNewEvent: true }],
    ["a read that does not wait", { waitNewEvent: false, nextPageToken: token }],
    ["a long poll whose token names no run", { waitNewEvent: true, nextPageToken: new TextEncoder().encode("{}") }],
  ])("%s is DEADLINE_EXCEEDED", async (_, req) => {
    const e = await stalledFrontend()
      .getWorkflowExecutionHistory({ namespace: "orders", execution: { workflowId: "w1" }, ...req }, atDeadline)
      .then(() => undefined, (e: unknown) => ConnectError.from(e));
    expect(e?.code).toBe(Code.DeadlineExceeded);
  });
});
