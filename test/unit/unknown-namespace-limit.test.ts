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
import { eventually } from "../support/eventually";
import { createLogger } from "../../src/observability/log";
import { createMetrics } from "../../src/observability/metrics";

/**
 * A frontend whose namespaces are `real`, each read (known) by its first call, with a burst of 3
 * and next to no refill; a call of a real name waits for held.read (if given) before it reads the
 * name, and for held.answer after.
 */
function frontend(real: string[], held?: { read(): Promise<void> | undefined; answer(): Promise<void> | undefined }) {
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
        await held?.read();
        known.add(namespace);
        await held?.answer();
        return {};
      },
    });
  }, { router: { interceptors: [interceptor] } });
  const wf = createClient(WorkflowService, transport);
  /** The codes of calls made one after another, OK or the refusal's. */
  const codeOf = (namespace: string) => wf.describeNamespace({ namespace }).then(() => "ok", (e: unknown) => Code[ConnectError.from(e).code]!);
  return Object.assign(
    async (...namespaces: string[]) => {
      const codes: string[] = [];
      for (const namespace of namespaces) codes.push(await codeOf(namespace));
      return codes;
    },
    { started: codeOf },
  );
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

  test("TestConcurrentFirstCallsOfANamespaceDoNotTakeItsBucketBelowEmpty", async () => {
    const gate = () => {
      let open!: () => void;
      return Object.assign(new Promise<void>((r) => (open = r)), { open: () => open() });
    };
    const [read, answer] = [gate(), gate()];
    let reading = 0;
    // The first 3 calls (a whole burst), let through before anything read the name, read it together and are answered last.
    const call = frontend(["orders"], { read: () => (++reading <= 3 ? read : undefined), answer: () => (reading <= 3 ? answer : undefined) });
    const first = Array.from({ length: 3 }, () => call.started("orders"));
    await eventually(() => expect(reading).toBe(3));
    read.open();
    // Before: ok, ok, ok, on a full bucket of its own, the 3 in flight charged to it only once answered (6 of a burst of 3, then -3 left).
    expect(await call("orders", "orders", "orders")).toEqual(["ResourceExhausted", "ResourceExhausted", "ResourceExhausted"]);
    answer.open();
    expect(await Promise.all(first)).toEqual(["ok", "ok", "ok"]);
    expect(await call("orders")).toEqual(["ResourceExhausted"]);
  });
});
