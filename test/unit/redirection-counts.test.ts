import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code, ConnectError, createHandlerContext } from "@connectrpc/connect";
import { createRemoteClientPool } from "../../src/cluster/remote-client";
import type { ClusterDirectory } from "../../src/cluster/directory";
import { ACTIVE_CLUSTER_HEADER } from "../../src/errors";
import { callActive } from "../../src/frontend/forwarding";
import { requestIdKey } from "../../src/frontend/interceptors";
import { createRedirectionOutcomes } from "../../src/frontend/redirection-outcomes";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { createMetrics } from "../../src/observability/metrics";

/** A stand-in for a cluster's frontend, answering every call with answer. */
const serving = (answer: () => Response) => Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: answer });

/** Every series of name in metrics' text, as `labels value`. */
const seriesOf = (text: string, name: string) => text.split("\n").filter((l) => l.startsWith(`${name}{`)).map((l) => l.slice(name.length)).sort();

describe("a call B forwards to A, which names C active instead (B has not heard of the failover yet)", () => {
  let a: ReturnType<typeof serving>, c: ReturnType<typeof serving>;
  beforeAll(() => {
    // A's refusal of a forwarded write, as a tern sends it: FAILED_PRECONDITION naming the cluster now active.
    a = serving(() => Response.json({ code: "failed_precondition", message: "namespace orders is active in cluster clusterC" }, { status: 400, headers: { [ACTIVE_CLUSTER_HEADER]: "clusterC" } }));
    // C's answer to a signal: the empty response, in the binary format the pool asks for.
    c = serving(() => new Response(new Uint8Array(), { headers: { "content-type": "application/proto" } }));
  });
  afterAll(() => {
    a.stop(true);
    c.stop(true);
  });

  test("TestACallFollowedFromTheClusterItWasForwardedToOnToTheActiveOneIsCountedOnceByTheOneThatAnsweredIt, as Temporal's frontend counts a redirected call", async () => {
    const metrics = createMetrics();
    const redirections = createRedirectionOutcomes({ metrics, log: createLogger({ write: () => {} }) });
    const row = (clusterName: string, rpcAddress: string) => ({ clusterName, rpcAddress, isCurrent: false, enableConnection: true });
    const clusters = {
      current: () => ({ clusterName: "clusterB" }),
      list: async () => [row("clusterA", a.url.host), row("clusterC", c.url.host)],
    } as unknown as ClusterDirectory;
    const method = WorkflowService.method.signalWorkflowExecution;
    const ctx = createHandlerContext({ service: WorkflowService, method, protocolName: "connect", requestMethod: "POST", url: "http://127.0.0.1/" });
    ctx.values.set(requestIdKey, "fwd-1");
    const to = { target: "clusterA", namespace: "orders", what: "SignalWorkflowExecution", limitMs: 5_000, requestId: "sig-1" };
    await callActive({ clusters, clients: createRemoteClientPool(), redirections }, ctx, to, ({ workflow }, options) => workflow.signalWorkflowExecution({ namespace: "orders" }, options));
    const text = metrics.render();
    // Before: a request and a failed_precondition error for clusterA too, for a call that succeeded.
    expect(seriesOf(text, "client_redirection_requests")).toEqual(['{operation="SignalWorkflowExecution",namespace="orders",target_cluster="clusterC"} 1']);
    expect(seriesOf(text, "client_redirection_errors")).toEqual([]);
    // A answered (its refusal): status says it does not hang.
    expect(redirections.recent("clusterA")).toMatchObject({ timeouts: 0, unreachable: 0, answeredAt: expect.any(Number) });
  });
});

describe("what replication status shows of the calls forwarded to a remote", () => {
  test("TestTheCallsARemoteLeftUnansweredCountForAMinuteAndACallerThatLeftIsNoneOfThem", async () => {
    let clock = 1_000_000;
    const redirections = createRedirectionOutcomes({ metrics: createMetrics(), log: createLogger({ write: () => {} }), now: () => clock });
    const to = { what: "SignalWorkflowExecution", namespace: "orders", target: "clusterA" };
    const failing = (code: Code) => redirections.observed(to, "fwd-1", Promise.reject(new ConnectError("no answer", code))).catch(() => {});
    await failing(Code.DeadlineExceeded);
    clock += 30_000;
    await failing(Code.DeadlineExceeded);
    await failing(Code.Canceled);
    expect(redirections.recent("clusterA")).toMatchObject({ timeouts: 2, unreachable: 0, last: { type: "timeout", at: clock }, answeredAt: undefined });
    // An error the remote answered is an answer: it does not hang.
    await failing(Code.NotFound);
    expect(redirections.recent("clusterA").answeredAt).toBe(clock);
    // The first a minute old: out of the count; the last stays named.
    clock += 30_001;
    expect(redirections.recent("clusterA")).toMatchObject({ timeouts: 1, last: { type: "timeout" } });
    clock += 30_000;
    expect(redirections.recent("clusterA")).toMatchObject({ timeouts: 0, unreachable: 0, last: { type: "timeout" } });
    expect(redirections.recent("clusterC")).toEqual({ timeouts: 0, unreachable: 0 });
  });
});
