import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { serverStartTimeout } from "../support/timeouts";
import { addr, startOrdersPair } from "./mesh";

setDefaultTimeout(serverStartTimeout);

const run = (workflowId: string) => ({ workflowId, runId: "" });

// Forwarding is the frontend's, whatever the store: PGlite alone.
describe("a call forwarded to an active cluster that answers late, or fails it", () => {
  let a: TestCluster, b: TestCluster;
  /** clusterA's log lines. */
  const logged: Record<string, unknown>[] = [];
  /** Set: clusterA holds each signal's commit until it settles. */
  let held: Promise<void> | undefined;
  beforeAll(async () => {
    [a, b] = await startOrdersPair("pglite", [
      {
        serverOptions: {
          log: createLogger({ level: "info", write: (line) => logged.push(JSON.parse(line)) }),
          beforeCommit: (operation) => (operation === "SignalWorkflowExecution" ? held : undefined),
        },
      },
      { extraYaml: "dcRedirectionPolicy: { policy: all-apis-forwarding }" },
    ]);
    await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w1", workflowType: "t", taskQueue: "q" });
  });
  afterAll(() => Promise.all([a, b].map((x) => x.destroy())));

  /**
   * Runs calls with B reaching A through a proxy that hands edit each call's headers and path, and
   * passes A's answer on once held(path) settles, then connects B to A again.
   */
  async function throughProxyToA<T>(edit: (headers: Headers, path: string) => void, calls: () => Promise<T>, held?: (path: string) => Promise<void> | undefined): Promise<T> {
    const proxy = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      idleTimeout: 0,
      async fetch(req) {
        const headers = new Headers(req.headers);
        for (const h of ["host", "content-length"]) headers.delete(h);
        const path = new URL(req.url).pathname;
        edit(headers, path);
        const answer = await fetch(`${a.url}${path}`, { method: req.method, headers, body: await req.arrayBuffer() });
        const body = await answer.arrayBuffer();
        await held?.(path);
        return new Response(body, { status: answer.status, headers: answer.headers });
      },
    });
    const connectBToA = (address: string) => b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: address });
    try {
      await connectBToA(proxy.url.host);
      return await calls();
    } finally {
      await connectBToA(addr(a));
      proxy.stop(true);
    }
  }

  test("TestAForwardedWriteAtTheCallersDeadlineNamesTheActiveClusterAndTheRequestIdToRetryWith", async () => {
    let release!: () => void;
    held = new Promise((resolve) => (release = resolve));
    // A Connect JSON POST with the deadline header alone: B's answer, not a timer of the client's.
    const signal = async (requestId: string) => {
      const res = await fetch(`${b.url}/tern.workflow.v1.WorkflowService/SignalWorkflowExecution`, {
        method: "POST",
        headers: { "content-type": "application/json", "connect-protocol-version": "1", "connect-timeout-ms": "1000" },
        body: JSON.stringify({ namespace: "orders", workflowExecution: run("w1"), signalName: "s", requestId }),
      });
      return (await res.json()) as { code?: string; message?: string };
    };
    try {
      // Before: "the operation timed out", and the request id B made up for it was nowhere.
      const err = await signal("");
      expect(err.code).toBe("deadline_exceeded");
      expect(err.message).toStartWith("cluster clusterA, where namespace orders is active, did not answer the forwarded SignalWorkflowExecution within ");
      const made = /ms, the caller's deadline \(request id (\S+)\); it may still be applied there: retry with the same request id$/.exec(err.message!)?.[1];
      expect(made).toBeDefined();
      held = undefined;
      release();
      // The retry with it is applied once, whether or not the first reached A.
      expect(await signal(made!)).toMatchObject({ eventId: expect.any(String) });
      expect(await signal(made!)).toMatchObject({ eventId: expect.any(String) });
      const { history } = await a.client(WorkflowService).getWorkflowExecutionHistory({ namespace: "orders", execution: run("w1") });
      expect(history!.events.filter((e) => e.attributes.case === "workflowExecutionSignaledEventAttributes").length).toBe(1);
    } finally {
      held = undefined;
      release();
    }
  });

  /**
   * w1's history long poll on x from token (none: from the first event) with a 20 s wait under a
   * deadlineMs deadline, the deadline header alone: the server's answer, not a timer of the client's.
   */
  async function poll(x: TestCluster, token: Uint8Array, deadlineMs: number) {
    const res = await fetch(`${x.url}/tern.workflow.v1.WorkflowService/GetWorkflowExecutionHistory`, {
      method: "POST",
      headers: { "content-type": "application/json", "connect-protocol-version": "1", "connect-timeout-ms": String(deadlineMs) },
      body: JSON.stringify({ namespace: "orders", execution: run("w1"), waitNewEvent: true, waitTimeout: "20s", nextPageToken: Buffer.from(token).toString("base64") }),
    });
    return (await res.json()) as { code?: string; message?: string; history?: { events?: unknown[] }; nextPageToken?: string; runId?: string };
  }

  /** w1's token past its last event, to long poll with. */
  async function tokenAtTheEnd(): Promise<Uint8Array> {
    const { nextPageToken } = await a.client(WorkflowService).getWorkflowExecutionHistory({ namespace: "orders", execution: run("w1"), waitNewEvent: true, maximumPageSize: 1000 });
    return nextPageToken;
  }

  test("TestAForwardedHistoryLongPollWhoseDeadlineComesFirstAnswersAnEmptyPageAsTheActiveClusterDoes", async () => {
    const nextPageToken = await tokenAtTheEnd();
    // Each hop answers a tenth of its deadline early, at most 200 ms (answerWithinMs); a stall past
    // that margin (on a loaded 2-core host, with A, B and this test sharing one event loop, one poll
    // in ten) answers the same empty page at the deadline (deadlineAnswerKey), so one poll each.
    // The bug answered deadline_exceeded at every poll; the margin alone, at one in ten.
    const expectEmptyPage = async (x: TestCluster) => {
      const page = await poll(x, nextPageToken, 3000);
      expect([x.name, page.code, page.message, page.history?.events ?? []]).toEqual([x.name, undefined, undefined, []]);
      expect(page.nextPageToken).toBe(Buffer.from(nextPageToken).toString("base64"));
    };
    // Before, both were DEADLINE_EXCEEDED, B's saying clusterA "did not answer" a call it was waiting on as asked.
    await expectEmptyPage(a);
    await expectEmptyPage(b);
    // B asks A for a wait that fits: an active cluster that waits what it is asked whatever its
    // deadline (a tern before 2026-12-07; here A behind a proxy that drops the deadline header) answers in time too.
    await throughProxyToA((headers) => headers.delete("connect-timeout-ms"), () => expectEmptyPage(b));
  });

  test("TestAForwardedHistoryLongPollWhoseActiveAnswersPastTheMarginAnswersAnEmptyPageWithItsToken", async () => {
    const nextPageToken = await tokenAtTheEnd();
    // A's answers are held until both polls are answered: past the 100 ms B's hop leaves before the caller's 1 s deadline.
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let held = 0;
    const [expired, fromTheStart] = await throughProxyToA(() => {}, async () => {
      try {
        return [await poll(b, nextPageToken, 1000), await poll(b, new Uint8Array(), 1000)];
      } finally {
        release();
      }
    }, (path) => (path.endsWith("/GetWorkflowExecutionHistory") ? (held++, released) : undefined));
    expect(held).toBe(2);
    // Before: deadline_exceeded, "cluster clusterA ... did not answer the forwarded GetWorkflowExecutionHistory within 998 ms", at every such stall.
    expect([expired.code, expired.message, expired.history?.events ?? []]).toEqual([undefined, undefined, []]);
    expect(expired.nextPageToken).toBe(Buffer.from(nextPageToken).toString("base64"));
    const { runId } = await a.client(WorkflowService).describeWorkflowExecution({ namespace: "orders", execution: run("w1") }).then((d) => d.workflowExecutionInfo!.execution!);
    expect(expired.runId).toBe(runId);
    // A poll from the first event has no such page: empty and without a token, it would say the history ends before it begins.
    expect(fromTheStart.code).toBe("deadline_exceeded");
    expect(fromTheStart.message).toMatch(/^cluster clusterA, where namespace orders is active, did not answer the forwarded GetWorkflowExecutionHistory within \d+ ms, the caller's deadline/);
  });

  test("TestAForwardedCallCarriesTheCallersClientHeadersTemporalPassesOnAndNoOthers", async () => {
    const seen: Headers[] = [];
    const caller = { "client-name": "temporal-go", "client-version": "1.30.0", "supported-server-versions": ">=1.0.0 <2.0.0", "caller-name": "orders-svc", "caller-type": "api", "x-tenant": "t1", authorization: "Bearer s3cret" };
    await throughProxyToA((headers, path) => path.endsWith("/SignalWorkflowExecution") && seen.push(headers), () =>
      b.client(WorkflowService).signalWorkflowExecution({ namespace: "orders", workflowExecution: run("w1"), signalName: "with-headers" }, { headers: caller }));
    const passed = ["client-name", "client-version", "supported-server-versions", "caller-name", "caller-type", "x-tenant", "authorization"].map((h) => seen[0]?.get(h));
    // Before, none of them: the active cluster saw the call as one of no client's.
    expect(passed).toEqual(["temporal-go", "1.30.0", ">=1.0.0 <2.0.0", "orders-svc", "api", null, null]);
  });

  test("TestAForwardedCallIsLoggedOnTheActiveClusterUnderTheCallersRequestId", async () => {
    await rejects(
      b.client(WorkflowService).signalWorkflowExecution({ namespace: "orders", workflowExecution: run("missing"), signalName: "s" }, { headers: { "x-request-id": "fwd-log-1" } }),
      Code.NotFound,
      "workflow execution missing not found",
    );
    // Before, A logged it under an id of its own, which nothing on B's side named.
    const onA = await eventually(() => {
      const line = logged.find((l) => l.msg === "rpc failed" && l.error === "workflow execution missing not found in namespace orders");
      expect(line).toBeDefined();
      return line!;
    });
    expect(onA.requestId).toBe("fwd-log-1");
  });
});
