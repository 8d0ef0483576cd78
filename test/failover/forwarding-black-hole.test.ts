import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { clusterTable } from "../../src/cli/format-cluster";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { eventually } from "../support/eventually";
import { replicationStatusTable } from "../../src/cli/commands/replication";
import { startHttpLinkedPair, startLinkedPair } from "../support/linked-pair";
import type { HttpProxy } from "../support/http-proxy";
import { awaitedLater, rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import type { TcpProxy } from "../support/tcp-proxy";
import { answeredWithin, serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";
const run = { workflowId: "w1", runId: "" };
/** B's bound on a forwarded call past its own work (the server's default is 30 s). */
const FORWARD_MS = 3_000;
/** The callers' deadline, the header alone: B's answer at it, not a timer of the client's. */
const atDeadline = { headers: { "connect-timeout-ms": "1000" } };
type Line = { level: string; msg: string; remote?: string; operation?: string; reason?: string; requestId?: string };

/** The value of x's /metrics series of name whose labels include labels; undefined if there is none. */
async function seriesOf(x: TestCluster, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const text = await (await fetch(`${x.url}/metrics`)).text();
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && wanted.every((w) => l.includes(w)));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(" ") + 1));
}

// Forwarding is the frontend's, whatever the store: PGlite alone.
describe("calls B forwards to an active cluster that takes connections and never answers", () => {
  let a: TestCluster, b: TestCluster, link: TcpProxy, close: () => Promise<void>;
  const bLog: Line[] = [];
  beforeAll(async () => {
    ({ a, b, link, close } = await startLinkedPair("pglite", [{}, {
      extraYaml: "dcRedirectionPolicy: { policy: all-apis-forwarding }",
      // B hears from A at least every 300 ms: its stream is overdue at 2.3 s of silence.
      serverOptions: { forwardTimeoutMs: FORWARD_MS, replication: { waitMs: 300 }, log: createLogger({ level: "info", write: (line) => bLog.push(JSON.parse(line)) }) },
    }]));
    await a.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId: "w1", workflowType: "t", taskQueue: "q" });
  });
  afterAll(async () => {
    link?.hold(false);
    link?.refuse(false);
    await close?.();
  });

  test("TestForwardedCallsToABlackHoledActiveClusterAreCountedAndLoggedOnceAWindowOnB, though each long poll's caller gets its empty page", async () => {
    const { nextPageToken } = await a.client(WorkflowService).getWorkflowExecutionHistory({ namespace: NS, execution: run, waitNewEvent: true, maximumPageSize: 1000 });
    const poll = () => b.client(WorkflowService).getWorkflowExecutionHistory({ namespace: NS, execution: run, waitNewEvent: true, waitTimeout: { seconds: 20n }, nextPageToken }, atDeadline);
    const timeouts = (operation: string) => seriesOf(b, "client_redirection_errors", { operation, target_cluster: "clusterA", error_type: "timeout" });
    const before = { polls: (await timeouts("GetWorkflowExecutionHistory")) ?? 0, signals: (await timeouts("SignalWorkflowExecution")) ?? 0 };
    link.hold(true);
    try {
      // At once, well inside the log's 10 s window.
      const signal = awaitedLater(b.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: run, signalName: "s", requestId: "sig-1" }, atDeadline));
      const pages = await Promise.all([poll(), poll(), poll()]);
      // As A answers a poll whose wait ends: nothing is wrong, as far as the callers can tell.
      expect(pages.map((p) => [p.history?.events ?? [], p.nextPageToken])).toEqual([1, 2, 3].map(() => [[], nextPageToken]));
      await rejects(signal, Code.DeadlineExceeded, "cluster clusterA, where namespace orders is active, did not answer the forwarded SignalWorkflowExecution");
      // Before: no series, and no line on B; the polls' callers could not tell A never answered.
      expect({ polls: await timeouts("GetWorkflowExecutionHistory"), signals: await timeouts("SignalWorkflowExecution") }).toEqual({ polls: before.polls + 3, signals: before.signals + 1 });
      expect(await seriesOf(b, "client_redirection_requests", { operation: "GetWorkflowExecutionHistory", target_cluster: "clusterA" })).toBeGreaterThanOrEqual(3);
      // One line per operation in the window, not one per call.
      const lines = bLog.filter((l) => l.msg === "forwarded call timed out: the active cluster did not answer in time");
      expect(lines.map(({ level, remote, operation }) => ({ level, remote, operation })).sort((x, y) => (x.operation ?? "").localeCompare(y.operation ?? ""))).toEqual([
        { level: "warn", remote: "clusterA", operation: "GetWorkflowExecutionHistory" },
        { level: "warn", remote: "clusterA", operation: "SignalWorkflowExecution" },
      ]);
      // And B's status says A is silent: its replication stream over the same link hears nothing either.
      await eventually(async () => {
        const [remote] = (await b.client(AdminService).getReplicationStatus({})).remotes;
        expect(remote!.connectionState).toStartWith("error: cluster clusterA has sent nothing on its replication stream for ");
      }, { timeout: answeredWithin(2_300) });
    } finally {
      link.hold(false);
    }
  });

  test("TestForwardedCallsToAnActiveClusterRefusingConnectionsAreCountedUnreachableOnB, with why", async () => {
    const unreachable = () => seriesOf(b, "client_redirection_errors", { operation: "SignalWorkflowExecution", target_cluster: "clusterA", error_type: "unreachable" });
    const before = (await unreachable()) ?? 0;
    link.refuse(true);
    link.cut();
    try {
      await rejects(b.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: run, signalName: "s", requestId: "sig-2" }),
        Code.Unavailable, "cannot reach cluster clusterA: ");
      expect(await unreachable()).toBe(before + 1);
      const line = bLog.find((l) => l.msg === "forwarded call failed: cannot reach the active cluster");
      expect(line).toMatchObject({ level: "warn", remote: "clusterA", operation: "SignalWorkflowExecution", reason: expect.stringMatching(/^connection (reset|closed|refused)$/) });
    } finally {
      link.refuse(false);
    }
  });
});

describe("calls B forwards to an active cluster whose replication stream is well and whose workflow calls hang", () => {
  let a: TestCluster, b: TestCluster, link: HttpProxy, close: () => Promise<void>;
  beforeAll(async () => {
    ({ a, b, link, close } = await startHttpLinkedPair("pglite", [{}, {
      extraYaml: "dcRedirectionPolicy: { policy: all-apis-forwarding }",
      serverOptions: { forwardTimeoutMs: FORWARD_MS, replication: { waitMs: 300 } },
    }]));
    await a.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId: "w1", workflowType: "t", taskQueue: "q" });
  });
  afterAll(async () => {
    link?.delayPaths(undefined);
    await close?.();
  });

  test("TestReplicationStatusAndClusterListOnBSayTheActiveClusterLeavesForwardedCallsUnansweredThoughItsStreamIsConnected", async () => {
    const status = async () => (await b.client(AdminService).getReplicationStatus({})).remotes[0]!;
    // A answers one forwarded call first: when it last did is in the status.
    await b.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: run, signalName: "s", requestId: "sig-ok" });
    await eventually(async () => expect((await status()).connectionState).toBe("connected"), { timeout: answeredWithin(2_300) });
    // The proxy passes A's AdminService (the stream, namespace polls) and holds its WorkflowService calls past any deadline.
    link.delayPaths((path) => path.includes("WorkflowService"), 60_000);
    try {
      const signals = [1, 2].map((i) => b.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: run, signalName: "s", requestId: `sig-hang-${i}` }, atDeadline));
      for (const signal of signals) await rejects(signal, Code.DeadlineExceeded, "cluster clusterA, where namespace orders is active, did not answer the forwarded SignalWorkflowExecution");
      // A's stream is heard from all along (it sends every 300 ms): the connection reads connected.
      const remote = await status();
      expect(remote.connectionState).toBe("connected");
      expect(remote.inboundLagUnknown).toBe(false);
      const f = remote.forwardedCalls!;
      expect({ timeouts: f.timeoutsLastMinute, unreachable: f.unreachableLastMinute, type: f.lastUnansweredType }).toEqual({ timeouts: 2, unreachable: 0, type: "timeout" });
      expect(f.lastAnsweredAt && f.lastUnansweredAt && f.lastAnsweredAt.seconds <= f.lastUnansweredAt.seconds).toBe(true);
      const text = replicationStatusTable(await b.client(AdminService).getReplicationStatus({}));
      expect(text).toContain("NOTE: 2 call(s) clusterB forwarded to clusterA in the last minute went unanswered (2 timed out, 0 unreachable), the last at ");
      expect(text).toMatch(/: timeout, [^;]+; it last answered one at \S+ \(\d+ s ago\)\. Calls forwarded to namespaces active in clusterA fail here while that lasts/);
      // operator cluster list, where an operator checks a remote, says it under CONNECTION's connected.
      const clusters = (await b.client(OperatorService).listClusters({})).clusters;
      const listed = clusters.find((c) => c.clusterName === "clusterA")!;
      expect({ state: listed.connectionState, timeouts: listed.forwardedCalls?.timeoutsLastMinute }).toEqual({ state: "connected", timeouts: 2 });
      expect(clusters.find((c) => c.isCurrentCluster)!.forwardedCalls).toBeUndefined();
      expect(clusterTable(clusters)).toMatch(/\bconnected\b[^\n]*\n(?:[^\n]*\n)*NOTE: 2 call\(s\) clusterB forwarded to clusterA in the last minute went unanswered \(2 timed out, 0 unreachable\)/);
    } finally {
      link.delayPaths(undefined);
    }
  });
});
