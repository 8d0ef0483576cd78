import { describe, expect, test } from "bun:test";
import { Code, ConnectError, createClient, createRouterTransport, type HandlerContext } from "@connectrpc/connect";
import { createDeadlineInterceptor } from "../../src/frontend/deadline";
import { forward } from "../../src/frontend/forwarding";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";

describe("a forwarded call's deadline words", () => {
  test("TestAForwardedFailoverAnsweredByTheActiveClusterIsNotSaidUnansweredWhenItsOwnWaitHereMeetsTheDeadline", async () => {
    const to = { current: "clusterB", target: "clusterA", namespace: "orders", what: "FailoverNamespace", limitMs: 40_000 };
    const transport = createRouterTransport(
      ({ service }) => {
        service(OperatorService, {
          // As failoverNamespace forwarded to the active: it answers at once, then this cluster waits to hear of the switch (heardOfSwitch) until the call ends.
          async failoverNamespace(_req, ctx: HandlerContext) {
            await forward(ctx, to, async () => ({}));
            await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
            return {};
          },
        });
      },
      { router: { interceptors: [createDeadlineInterceptor()] } },
    );
    // The deadline header alone: the server's answer at it, not a timer of the client's.
    const e = await createClient(OperatorService, transport)
      .failoverNamespace({ namespace: "orders" }, { headers: { "connect-timeout-ms": "300" } })
      .then(() => undefined, (e: unknown) => ConnectError.from(e));
    expect(e?.code).toBe(Code.DeadlineExceeded);
    // Before: "cluster clusterA, where namespace orders is active, did not answer the forwarded FailoverNamespace within 300 ms", though it had.
    expect(e?.rawMessage).not.toContain("did not answer the forwarded");
  });
});
