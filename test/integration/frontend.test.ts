import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { create } from "@bufbuild/protobuf";
import { PayloadsSchema, WorkflowExecutionStatus, type WorkflowIdReusePolicy } from "../../src/gen/tern/common/v1/common_pb";
import { Health, HealthCheckResponse_ServingStatus } from "../../src/gen/grpc/health/v1/health_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { startTestCluster, type TestCluster } from "../support/server";
import { rejects } from "../support/rejects";
import { eventually } from "../support/eventually";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "t", taskQueue: "q" };
const bytes = (n: number) => create(PayloadsSchema, { payloads: [{ metadata: {}, data: new Uint8Array(n) }] });

describe("frontend limits, errors, health and metrics", () => {
  let cluster: TestCluster;
  let wf: ReturnType<typeof cluster.client<typeof WorkflowService>>;
  const logs: string[] = [];
  beforeAll(async () => {
    cluster = await startTestCluster({
      store: "pglite",
      extraYaml: `limits:
  blobSizeLimitError: 4096
  blobSizeLimitWarn: 1024
  historyCountLimitError: 5
  historyCountLimitWarn: 3
  hostRps: { rps: 1000, burst: 1000 }
  namespaceRps: { rps: 50, burst: 25 }`,
      serverOptions: {
        log: (await import("../../src/observability/log")).createLogger({ level: "info", write: (l) => logs.push(l) }),
      },
    });
    wf = cluster.client(WorkflowService);
    await wf.registerNamespace({ namespace: "lim" });
  });
  afterAll(() => cluster.destroy());

  test("payloads over the blob limit are rejected; over the warning size logged", async () => {
    await rejects(
      wf.startWorkflowExecution({ namespace: "lim", workflowId: "big", ...T, input: bytes(5000) }),
      Code.InvalidArgument,
      "payload of 5000 bytes exceeds the limit of 4096 bytes",
    );
    await wf.startWorkflowExecution({ namespace: "lim", workflowId: "big", ...T, input: bytes(2000) });
    expect(logs.some((l) => l.includes('"msg":"large payload"') && l.includes('"bytes":2000'))).toBe(true);
    await rejects(
      wf.signalWorkflowExecution({ namespace: "lim", workflowExecution: { workflowId: "big" }, signalName: "s", input: bytes(4097) }),
      Code.InvalidArgument,
      "exceeds the limit",
    );
  });

  test("workflow ids and request ids are counted in UTF-8 bytes: 1,000 CJK characters are INVALID_ARGUMENT, not an index row too large (INTERNAL)", async () => {
    // PostgreSQL's index rows hold at most 2,704 bytes (after compression: so characters that do
    // not repeat); 1,000 CJK characters are 3,000.
    const cjk = (n: number) => Array.from({ length: n }, (_, i) => String.fromCharCode(0x4e00 + ((i * 7919) % 20000))).join("");
    await rejects(wf.startWorkflowExecution({ namespace: "lim", workflowId: cjk(1000), ...T }), Code.InvalidArgument, "workflow id is longer than 1000 bytes (UTF-8: 3000)");
    await rejects(wf.startWorkflowExecution({ namespace: "lim", workflowId: "cjk", ...T, requestId: cjk(600) }), Code.InvalidArgument, "request id is longer than 1000 bytes (UTF-8: 1800)");
    // The longest ids allowed are stored.
    const longest = await wf.startWorkflowExecution({ namespace: "lim", workflowId: cjk(333) + "x", ...T, requestId: cjk(333) + "r" });
    expect(longest.started).toBe(true);
  });

  test("a huge workflow or run id on a read or a write to a run is INVALID_ARGUMENT, not a NOT_FOUND that quotes it whole", async () => {
    // Before: a 100,000-character id came back whole in the NOT_FOUND message (and in its log line).
    const huge = "w".repeat(100_000);
    const at = { namespace: "lim", execution: { workflowId: huge } };
    await rejects(wf.describeWorkflowExecution(at), Code.InvalidArgument, "workflow id is longer than 1000 characters");
    await rejects(wf.getWorkflowExecutionHistory(at), Code.InvalidArgument, "workflow id is longer than 1000 characters");
    await rejects(wf.signalWorkflowExecution({ namespace: "lim", workflowExecution: { workflowId: huge }, signalName: "s" }), Code.InvalidArgument, "workflow id is longer than 1000 characters");
    await rejects(wf.describeWorkflowExecution({ namespace: "lim", execution: { workflowId: "w", runId: huge } }), Code.InvalidArgument, "run id is longer than 1000 characters");
    await rejects(wf.terminateWorkflowExecution({ namespace: "lim", workflowExecution: { workflowId: "w", runId: huge }, reason: "r" }), Code.InvalidArgument, "run id is longer than 1000 characters");
  });

  test("ids and names over 1000 characters are rejected; reasons and failure messages count toward the blob limit", async () => {
    const long = "x".repeat(1001);
    await rejects(wf.startWorkflowExecution({ namespace: "lim", workflowId: "ids", ...T, taskQueue: long }), Code.InvalidArgument, "task queue is longer than 1000 characters");
    await rejects(wf.startWorkflowExecution({ namespace: "lim", workflowId: "ids", ...T, identity: long }), Code.InvalidArgument, "identity is longer than 1000 characters");
    await rejects(wf.startWorkflowExecution({ namespace: "lim", workflowId: "ids", ...T, workflowIdReusePolicy: 99 as WorkflowIdReusePolicy }), Code.InvalidArgument, "unknown workflow id reuse policy 99");
    await wf.startWorkflowExecution({ namespace: "lim", workflowId: "ids", ...T });
    const run = { workflowId: "ids" };
    await rejects(wf.signalWorkflowExecution({ namespace: "lim", workflowExecution: run, signalName: long }), Code.InvalidArgument, "signal name is longer than 1000 characters");
    await rejects(wf.signalWorkflowExecution({ namespace: "lim", workflowExecution: run, signalName: "s", requestId: long }), Code.InvalidArgument, "request id is longer than 1000 bytes");
    await rejects(wf.recordMarker({ namespace: "lim", workflowExecution: run, markerName: long }), Code.InvalidArgument, "marker name is longer than 1000 characters");
    await rejects(wf.terminateWorkflowExecution({ namespace: "lim", workflowExecution: run, reason: "é".repeat(2049) }), Code.InvalidArgument, "payload of 4098 bytes exceeds the limit of 4096 bytes");
    await rejects(wf.failWorkflowExecution({ namespace: "lim", workflowExecution: run, failure: { message: "m".repeat(4097) } }), Code.InvalidArgument, "payload of 4097 bytes exceeds the limit");
    // Nothing was written: the run is still open, with its one start event.
    const desc = await wf.describeWorkflowExecution({ namespace: "lim", execution: run });
    expect(desc.workflowExecutionInfo!.historyLength).toBe(1n);
  });

  test("a history over the event count limit is rejected", async () => {
    // A namespace of its own: on a fast host the tests before it spent "lim"'s rate limit (burst 25),
    // and a signal here was RESOURCE_EXHAUSTED.
    await wf.registerNamespace({ namespace: "long-history" });
    await wf.startWorkflowExecution({ namespace: "long-history", workflowId: "long", ...T });
    for (let i = 0; i < 4; i++) await wf.signalWorkflowExecution({ namespace: "long-history", workflowExecution: { workflowId: "long" }, signalName: "s" });
    await rejects(
      wf.signalWorkflowExecution({ namespace: "long-history", workflowExecution: { workflowId: "long" }, signalName: "s" }),
      Code.FailedPrecondition,
      "would have 6 events, over the history limit of 5",
    );
    expect(logs.some((l) => l.includes("history size over warning limit"))).toBe(true);
  });

  test("a run at the history limit still closes: terminated, or timed out without holding up other runs' timeouts", async () => {
    // A namespace of its own: the others' requests leave "lim" little of its rate limit.
    await wf.registerNamespace({ namespace: "full" });
    const fill = async (workflowId: string, timeoutSeconds?: bigint) => {
      await wf.startWorkflowExecution({ namespace: "full", workflowId, ...T, ...(timeoutSeconds && { workflowExecutionTimeout: { seconds: timeoutSeconds } }) });
      for (let i = 0; i < 4; i++) await wf.signalWorkflowExecution({ namespace: "full", workflowExecution: { workflowId }, signalName: "s" });
    };
    await fill("full-terminated");
    await wf.terminateWorkflowExecution({ namespace: "full", workflowExecution: { workflowId: "full-terminated" }, reason: "too long" });
    const terminated = await wf.describeWorkflowExecution({ namespace: "full", execution: { workflowId: "full-terminated" } });
    expect([terminated.workflowExecutionInfo!.status, terminated.workflowExecutionInfo!.historyLength]).toEqual([WorkflowExecutionStatus.TERMINATED, 6n]);

    // The full run's timeout is due first; the other's must not wait behind it.
    await fill("full-timed-out", 1n);
    await wf.startWorkflowExecution({ namespace: "full", workflowId: "after-it", ...T, workflowExecutionTimeout: { seconds: 1n } });
    await eventually(async () => {
      for (const workflowId of ["full-timed-out", "after-it"]) {
        const d = await wf.describeWorkflowExecution({ namespace: "full", execution: { workflowId } });
        expect(d.workflowExecutionInfo!.status).toBe(WorkflowExecutionStatus.TIMED_OUT);
      }
    }, { timeout: 5000, interval: 200 });
    expect(logs.some((l) => l.includes("timer queue scan failed"))).toBe(false);
  });

  test("per-namespace rate limit: RESOURCE_EXHAUSTED with a retry hint, other namespaces unaffected", async () => {
    // A bucket of 5 calls refilled at 1 a second: 20 calls at once meet it however slowly a loaded
    // host takes them in (at 50 a second past 25, 60 calls came slower than the refill there, and
    // none was refused), and none is let through past what it held and refilled meanwhile.
    const limited = await startTestCluster({ store: "pglite", extraYaml: "limits:\n  namespaceRps: { rps: 1, burst: 5 }" });
    try {
      const client = limited.client(WorkflowService);
      await client.registerNamespace({ namespace: "busy" });
      await client.registerNamespace({ namespace: "other" });
      const began = performance.now();
      const results = await Promise.allSettled(Array.from({ length: 20 }, () => client.describeNamespace({ namespace: "busy" })));
      const seconds = (performance.now() - began) / 1000;
      const refused = results.flatMap((r) => (r.status === "rejected" ? [r.reason as ConnectError] : []));
      expect(results.length - refused.length).toBeLessThanOrEqual(5 + seconds);
      expect(refused.length).toBeGreaterThan(0);
      for (const e of refused) {
        expect(e.code).toBe(Code.ResourceExhausted);
        expect(e.rawMessage).toMatch(/^rate limit of namespace busy exceeded; retry after \d+ms/);
        expect(Number(e.metadata.get("retry-after-ms"))).toBeGreaterThan(0);
      }
      await client.describeNamespace({ namespace: "other" });
    } finally {
      await limited.destroy();
    }
  });

  test("TestARealNamespacesFirstCallAfterAStartIsNotHeldBehindAFloodOfMadeUpNames", async () => {
    const limits = "limits:\n  namespaceRps: { rps: 1, burst: 5 }";
    const first = await startTestCluster({ store: "pglite", extraYaml: limits });
    let restarted: TestCluster | undefined;
    try {
      await first.client(WorkflowService).registerNamespace({ namespace: "real" });
      await first.stop();
      restarted = await startTestCluster({ store: "pglite", dataLocation: first.dataLocation, extraYaml: limits });
      const client = restarted.client(WorkflowService);
      const codeOf = (namespace: string) => client.describeNamespace({ namespace }).then(() => "ok", (e: unknown) => ConnectError.from(e).rawMessage);
      /** How many of n calls with made-up names were refused on the limit of names not read yet. */
      const flood = async (n: number, round: number) => {
        const answers = await Promise.all(Array.from({ length: n }, (_, i) => codeOf(`made-up-${round}-${i}`)));
        return answers.filter((c) => c.startsWith("rate limit of namespace _unknown_ exceeded; retry after")).length;
      };
      // The made-up names meet the limit of names not read yet as before (a burst of 5)...
      expect(await flood(20, 0)).toBeGreaterThanOrEqual(10);
      // ...and the real one is told from them by a read of the names: before, refused as theirs while the flood lasted.
      expect(await codeOf("real")).toBe("ok");
      expect(await flood(20, 1)).toBeGreaterThanOrEqual(10);
    } finally {
      await restarted?.stop();
      await first.destroy();
    }
  });

  test("unknown errors are INTERNAL with a request id and no SQL text; logs carry the id", async () => {
    // A raw SQL failure the domain does not expect: a constraint no event can meet.
    const { sql } = await import("drizzle-orm");
    await cluster.server.database.db.execute(sql`alter table history_events add constraint no_events check (event_id < 0) not valid`);
    try {
      const e = await wf.startWorkflowExecution({ namespace: "lim", workflowId: "sql", ...T }).catch((x) => x);
      expect(e.code).toBe(Code.Internal);
      expect(e.rawMessage).toMatch(/^internal error \(request id [0-9A-Z]{26}\)$/);
      expect(e.rawMessage).not.toContain("insert");
      const id = e.rawMessage.match(/request id ([0-9A-Z]{26})/)[1];
      expect(e.metadata.get("x-request-id")).toBe(id);
      expect(logs.some((l) => l.includes(id) && l.includes('"level":"error"'))).toBe(true);
    } finally {
      await cluster.server.database.db.execute(sql`alter table history_events drop constraint no_events`);
    }
  });

  test("values the database cannot store, and numbers out of range, are INVALID_ARGUMENT; nothing is written", async () => {
    const { sql } = await import("drizzle-orm");
    const runs = async () => (await cluster.server.database.db.execute(sql`select count(*)::int as n from executions where workflow_id like 'nul%'`)) as unknown;
    const before = JSON.stringify(await runs());
    // PostgreSQL stores no NUL in a text: refused before the handler, naming the field (nul-text.test.ts).
    await rejects(wf.startWorkflowExecution({ namespace: "lim", workflowId: "nul\u0000", ...T }), Code.InvalidArgument, "workflow_id contains a NUL character");
    await rejects(wf.startWorkflowExecution({ namespace: "lim", workflowId: "nul", ...T, identity: "x\u0000" }), Code.InvalidArgument, "identity contains a NUL character");
    expect(JSON.stringify(await runs())).toBe(before);
    await rejects(
      wf.startWorkflowExecution({ namespace: "lim", workflowId: "far", ...T, workflowExecutionTimeout: { seconds: 315_576_000_000n } }),
      Code.InvalidArgument,
      "workflow execution timeout must be at most 100 years",
    );
    await rejects(
      wf.registerNamespace({ namespace: "half", workflowExecutionRetentionPeriod: { seconds: 0n, nanos: 500_000_000 } }),
      Code.InvalidArgument,
      "retention must be a whole number of seconds, not 0.5s",
    );
    // Rounded to a number, an id past 2^53 - 1 would name another event.
    await rejects(
      wf.recordMarker({ namespace: "lim", workflowExecution: { workflowId: "far" }, markerName: "m", expectedNextEventId: 2n ** 63n - 1n }),
      Code.InvalidArgument,
      "expected next event id 9223372036854775807 is out of range",
    );
    // Event ids begin at 1: one below can never be a run's next (before: FAILED_PRECONDITION, "but the run's is 2", as if the run had moved on).
    await wf.startWorkflowExecution({ namespace: "lim", workflowId: "marker-ids", ...T });
    for (const id of [-1n, 0n]) {
      await rejects(
        wf.recordMarker({ namespace: "lim", workflowExecution: { workflowId: "marker-ids" }, markerName: "m", expectedNextEventId: id }),
        Code.InvalidArgument,
        `expected next event id ${id} is not an event id: they begin at 1 (leave it out to write the marker whatever the run's next event id)`,
      );
    }
    expect((await wf.describeWorkflowExecution({ namespace: "lim", execution: { workflowId: "marker-ids" } })).nextEventId).toBe(2n);
  });

  test("Health/Check answers for the server and each service it serves; an unknown service is NOT_FOUND, not SERVING", async () => {
    const health = cluster.client(Health);
    for (const service of ["", "tern.workflow.v1.WorkflowService", "tern.admin.v1.AdminService", "grpc.health.v1.Health"]) {
      expect((await health.check({ service })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    }
    // Before: SERVING, so a probe with a misspelt service name passed whatever the server's state.
    await rejects(health.check({ service: "tern.workflow.v1.WorkfowService" }), Code.NotFound, 'unknown service "tern.workflow.v1.WorkfowService"');
    const watch = new AbortController();
    for await (const r of health.watch({ service: "nope" }, { signal: watch.signal })) {
      expect(r.status).toBe(HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN);
      watch.abort();
      break;
    }
  });

  test("a namespace name a client made up is no metric series of its own (_unknown_), however many or long", async () => {
    // Before: each name sent once was a series (and a rate-limit bucket) for good: 300 misspelt
    // names added 500 KB to /metrics, one 1 MB name 19 MB.
    const made = ["typo-1", "typo-2", "typo-3", "x".repeat(100_000)];
    for (const namespace of made) await rejects(wf.describeNamespace({ namespace }), namespace.length > 255 ? Code.InvalidArgument : Code.NotFound, "namespace");
    await wf.describeNamespace({ namespace: "lim" });
    const metrics = await (await fetch(`${cluster.url}/metrics`)).text();
    expect(metrics).not.toContain("typo-");
    expect(metrics).not.toContain("x".repeat(1000));
    expect(metrics).toMatch(/service_requests\{operation="DescribeNamespace",namespace="_unknown_"\} [4-9]/);
    expect(metrics).toMatch(/service_errors\{operation="DescribeNamespace",namespace="_unknown_",code="NotFound"\} [3-9]/);
    expect(metrics).toMatch(/service_requests\{operation="DescribeNamespace",namespace="lim"\} \d+/);
    expect(metrics.length).toBeLessThan(200_000);
  });

  test("a namespace's first calls are labelled with its name: its register, and its first call after a restart, failed or not", async () => {
    // Before: the label was decided before the call, and a name the registry had not read yet was _unknown_.
    const first = await startTestCluster({ store: "pglite" });
    let restarted: TestCluster | undefined;
    try {
      await first.client(WorkflowService).registerNamespace({ namespace: "first-ns" });
      const before = await (await fetch(`${first.url}/metrics`)).text();
      expect(before).toContain(`service_requests{operation="RegisterNamespace",namespace="first-ns"} 1\n`);
      await first.stop();
      restarted = await startTestCluster({ store: "pglite", dataLocation: first.dataLocation });
      const again = restarted.client(WorkflowService);
      await rejects(again.describeWorkflowExecution({ namespace: "first-ns", execution: { workflowId: "none" } }), Code.NotFound, "none");
      await again.describeNamespace({ namespace: "first-ns" });
      await rejects(again.describeNamespace({ namespace: "made-up" }), Code.NotFound, "made-up");
      const after = await (await fetch(`${restarted.url}/metrics`)).text();
      expect(after).toContain(`service_requests{operation="DescribeWorkflowExecution",namespace="first-ns"} 1\n`);
      expect(after).toContain(`service_errors{operation="DescribeWorkflowExecution",namespace="first-ns",code="NotFound"} 1\n`);
      expect(after).toContain(`service_latency_count{operation="DescribeWorkflowExecution",namespace="first-ns"} 1\n`);
      expect(after).toContain(`service_requests{operation="DescribeNamespace",namespace="first-ns"} 1\n`);
      expect(after).toContain(`service_requests{operation="DescribeNamespace",namespace="_unknown_"} 1\n`);
      expect(after).not.toContain("made-up");
    } finally {
      await restarted?.stop();
      await first.destroy();
    }
  });

  test("a binary request's Timestamp outside 0001..9999 is INVALID_ARGUMENT, not an Invalid Date (INTERNAL)", async () => {
    // JSON checks a Timestamp's range; the binary form does not, and 10^15 seconds reached the query builder.
    const binary = createClient(WorkflowService, createConnectTransport({ baseUrl: cluster.url, useBinaryFormat: true }));
    for (const seconds of [10n ** 15n, -(10n ** 15n)]) {
      await rejects(binary.listWorkflowExecutions({ namespace: "lim", startTimeMin: { seconds, nanos: 0 } }), Code.InvalidArgument,
        `start_time_min must be a time from 0001-01-01 to 9999-12-31 (seconds ${seconds}, nanos 0)`);
    }
    await rejects(binary.listWorkflowExecutions({ namespace: "lim", startTimeMax: { seconds: 0n, nanos: -1 } }), Code.InvalidArgument, "start_time_max must be a time");
    expect((await binary.listWorkflowExecutions({ namespace: "lim", startTimeMin: { seconds: 0n, nanos: 0 } })).executions.length).toBeGreaterThan(0);
  });

  test("a binary request body that is no protobuf message is INVALID_ARGUMENT, not INTERNAL, and logs no internal error", async () => {
    const before = logs.length;
    const res = await fetch(`${cluster.url}/tern.workflow.v1.WorkflowService/StartWorkflowExecution`, {
      method: "POST",
      headers: { "content-type": "application/proto" },
      body: new Uint8Array([0x0a, 0x05, 0x6c, 0x69]),
    });
    expect([res.status, await res.json()]).toEqual([400, { code: "invalid_argument", message: "cannot decode message tern.workflow.v1.StartWorkflowExecutionRequest from binary: premature EOF" }]);
    expect(logs.slice(before).filter((l) => l.includes('"level":"error"'))).toEqual([]);
  });

  test("GET /health and /metrics", async () => {
    const health = await fetch(`${cluster.url}/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ status: "SERVING" });
    const metrics = await (await fetch(`${cluster.url}/metrics`)).text();
    expect(metrics).toMatch(/service_requests\{operation="StartWorkflowExecution",namespace="lim"\} \d+/);
    expect(metrics).toMatch(/service_errors\{operation="StartWorkflowExecution",namespace="lim",code="InvalidArgument"\} \d+/);
    expect(metrics).toContain("service_latency_bucket");
    expect(metrics).toMatch(/persistence_requests\{operation="CreateWorkflowExecution"\} \d+/);
    expect(metrics).toContain("# TYPE workflow_timeout counter");
    // The server samples its event loop from the start, every 100 ms.
    await eventually(async () => {
      const text = await (await fetch(`${cluster.url}/metrics`)).text();
      expect(text).toMatch(/^process_event_loop_delay_seconds_count [1-9]\d*$/m);
    });
  });

  test("JSON over HTTP/1.1 and a caller's x-request-id are honoured", async () => {
    const res = await fetch(`${cluster.url}/tern.workflow.v1.WorkflowService/DescribeNamespace`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": "my-id-1" },
      body: JSON.stringify({ namespace: "nope" }),
    });
    expect(res.status).toBe(404);
    expect(res.headers.get("x-request-id")).toBe("my-id-1");
    expect(await res.json()).toEqual({ code: "not_found", message: "namespace nope not found" });
  });
});
