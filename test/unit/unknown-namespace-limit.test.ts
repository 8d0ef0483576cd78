/**
 * A namespace's first calls after a start (before the server has read its name) are let through
 * on the bucket of names not read yet (`_unknown_`), which a flood of made-up names meets: once
 * the name is found, the call is the namespace's own, on its own limit.
 */
import { describe, expect, test } from "bun:test";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { notFound } from "../../src/errors";
import { createCallFailures } from "../../src/frontend/call-failures";
import { createFrontendInterceptor } from "../../src/frontend/interceptors";
import { createRateLimiter } from "../../src/frontend/rate-limiter";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { createMetrics } from "../../src/observability/metrics";

/** A frontend whose namespaces are `real`, each read (known) by its first call, with a burst of 3 and next to no refill. */
function frontend(real: string[]) {
  const known = new Set<string>();
  const metrics = createMetrics();
  const log = createLogger({ write: () => {} });
  const limiter = createRateLimiter({ rps: 0, burst: 0 }, { rps: 0.001, burst: 3 });
  const interceptor = createFrontendInterceptor({ metrics, log, failures: createCallFailures({ metrics, log }), limiter, knownNamespace: (n) => known.has(n) });
  const transport = createRouterTransport(({ service }) => {
    service(WorkflowService, {
      // As the registry does: a name found is known from then on.
      async describeNamespace({ namespace }) {
        if (!real.includes(namespace)) throw notFound(`namespace ${namespace} not found`);
        known.add(namespace);
        return {};
      },
    });
  }, { router: { interceptors: [interceptor] } });
  const wf = createClient(WorkflowService, transport);
  /** The codes of calls made one after another, OK or the refusal's. */
  return async (...namespaces: string[]) => {
    const codes: string[] = [];
    for (const namespace of namespaces) {
      codes.push(await wf.describeNamespace({ namespace }).then(() => "ok", (e: unknown) => Code[ConnectError.from(e).code]!));
    }
    return codes;
  };
}

describe("a namespace not read yet, and the _unknown_ rate-limit bucket", () => {
  test("TestANamespacesFirstCallIsChargedToItsOwnLimitNotAddedToIt", async () => {
    const call = frontend(["orders"]);
    // Before: 4 of a burst of 3, the first drawn from _unknown_ and the namespace's own bucket still full.
    expect(await call(...Array(5).fill("orders"))).toEqual(["ok", "ok", "ok", "ResourceExhausted", "ResourceExhausted"]);
  });

  test("TestFirstCallsOfRealNamespacesDoNotSpendTheShareOfNamesNotReadYet", async () => {
    const call = frontend(["a", "b", "c", "d", "e"]);
    // Before: d and e, each at its first call, were refused 'rate limit of namespace _unknown_ exceeded'.
    expect(await call("a", "b", "c", "d", "e")).toEqual(["ok", "ok", "ok", "ok", "ok"]);
  });

  test("TestMadeUpNamesStillMeetTheLimitOfNamesNotReadYet", async () => {
    const call = frontend(["a"]);
    // A real name not read yet waits with them: without a read it cannot be told from a made-up one.
    expect(await call("typo-1", "typo-2", "typo-3", "typo-4", "a")).toEqual(["NotFound", "NotFound", "NotFound", "ResourceExhausted", "ResourceExhausted"]);
  });
});
