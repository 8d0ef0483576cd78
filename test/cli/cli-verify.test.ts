import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { ORDER_DIFFERS } from "../../replication/verify-page";
import { createCli } from "../../src/cli/cli";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { startClusters } from "../failover/mesh";
import { addr, expectSameHistories, globalNamespace } from "../replication/support";
import { runCli } from "./harness";
import { eventually } from "../support/eventually";
import { startHttpProxy, type HttpProxy } from "../support/http-proxy";
import { json } from "../support/payload";
import type { TestCluster } from "../support/server";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "ledger";
/** Runs of 12 events: with no time for large runs, each page of B's checksums finishes about one. */
const RUNS = 12;

/** The CLI in process against a real server, its long-running calls given no wait on top of --rpc-timeout. */
async function tern(x: TestCluster, ...argv: string[]) {
  let out = "";
  let err = "";
  const calls: string[] = [];
  const cli = createCli({
    createTransport: (baseUrl) => createConnectTransport({ baseUrl, fetch: ((input, init) => (calls.push(String(input)), fetch(input, init))) as typeof fetch }),
    stdout: (t) => void (out += t),
    stderr: (t) => void (err += t),
    longRunMs: 0,
  });
  const began = Date.now();
  const code = await cli.run(["--address", addr(x), ...argv]);
  return { code, out, err, calls: calls.filter((c) => c.endsWith("/VerifyReplication")).length, tookMs: Date.now() - began };
}

describe("tern replication verify against real clusters, through a slow link", () => {
  let a: TestCluster, b: TestCluster;
  let link: HttpProxy;
  /** A's pages of B's checksums held this long on their way, as over a slow link or from a loaded peer. */
  const slowPages = (ms: number) => link.delayPaths((path) => path.endsWith("/GetExecutionChecksums"), ms);

  beforeAll(async () => {
    // B digests its runs for no time per page: a page of B's checksums finishes about one run.
    [a, b] = await startClusters("pglite", [{}, { serverOptions: { replication: { verify: { sqlDigestBytes: 0, pageWorkMs: 0 } } } }]);
    link = startHttpProxy(addr(b));
    // A reaches B through the link; B reaches A directly.
    await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: `127.0.0.1:${link.port}` });
    await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
    const nsId = await globalNamespace(a, b, NS);
    const wf = a.client(WorkflowService);
    for (let r = 0; r < RUNS; r++) {
      const workflowId = `entry-${String(r).padStart(2, "0")}`;
      await wf.startWorkflowExecution({ namespace: NS, workflowId, workflowType: "Post", taskQueue: "q" });
      for (let i = 0; i < 11; i++) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId }, signalName: `s${i}`, input: json(i) });
    }
    await eventually(() => expectSameHistories(a, b, nsId), { timeout: 60_000 });
  });
  afterAll(async () => {
    await link?.close();
    await Promise.all([a?.destroy(), b?.destroy()]);
  });

  test("AVerifyLongerThanTheDeadlineSucceedsPageByPage: --rpc-timeout bounds each page, not the whole verify", async () => {
    slowPages(300);
    const r = await tern(a, "replication", "verify", "-n", NS, "--cluster", "clusterB", "--rpc-timeout", "2s");
    expect([r.code, r.err, r.out]).toEqual([0, "", `clusterA: ${RUNS} executions, clusterB: ${RUNS} executions; histories are identical\n`]);
    expect(r.calls).toBeGreaterThan(RUNS / 2);
    expect(r.tookMs).toBeGreaterThan(2_000);
  });

  test("APageLongerThanTheDeadlineFails: with the line naming the address and the deadline", async () => {
    slowPages(3_000);
    const r = await tern(a, "replication", "verify", "-n", NS, "--cluster", "clusterB", "--rpc-timeout", "2s");
    expect([r.code, r.out, r.err]).toEqual([1, "", `error: tern at ${a.url} did not answer within 2s (the call's deadline; --rpc-timeout sets it, 0 for none)\n`]);
    expect(r.calls).toBe(1);
  });
});

describe("tern replication verify's pages", () => {
  const run = (workflowId: string, eventCount: bigint) => ({ workflowId, runId: "r", local: { workflowId, runId: "r", eventCount, checksum: "aaaa" }, remote: { workflowId, runId: "r", eventCount, checksum: "bbbb" } });

  test("PagesAddUp: counts and differences of every page, -o json without a token", async () => {
    const asked: { pageSize: number; token: string }[] = [];
    const verifyReplication = (req: { pageSize: number; nextPageToken: Uint8Array }) => {
      asked.push({ pageSize: req.pageSize, token: new TextDecoder().decode(req.nextPageToken) });
      const first = req.nextPageToken.length === 0;
      return { clusterName: "clusterA", remoteCluster: "clusterB", localExecutions: first ? 1000n : 5n, remoteExecutions: first ? 999n : 5n, diverging: [run(first ? "w1" : "w2", 2n)], nextPageToken: first ? new TextEncoder().encode("next") : new Uint8Array(0), paged: true };
    };
    const r = await runCli(["replication", "verify", "-n", "orders", "--cluster", "clusterB", "-o", "json"], { admin: { verifyReplication } });
    expect(asked).toEqual([{ pageSize: 1000, token: "" }, { pageSize: 1000, token: "next" }]);
    const out = JSON.parse(r.stdout);
    expect([r.code, out.localExecutions, out.remoteExecutions, out.diverging.map((d: { workflowId: string }) => d.workflowId), out.nextPageToken, out.paged]).toEqual([1, "1005", "1004", ["w1", "w2"], undefined, undefined]);
  });

  // Two clusters whose databases sort workflow ids differently (PostgreSQL's en_US.UTF-8 and
  // PGlite's C, say) cannot line their pages up; the whole namespace in one call still compares them.
  test("ClustersThatOrderRunsDifferentlyAreVerifiedInOneCall, with a NOTE saying why", async () => {
    const asked: number[] = [];
    const verifyReplication = (req: { pageSize: number }) => {
      asked.push(req.pageSize);
      if (req.pageSize > 0) {
        throw new ConnectError(`the remote cluster's ${ORDER_DIFFERS} (do their databases' collations differ?); a VerifyReplication without page_size compares the whole namespace in one call`, Code.FailedPrecondition);
      }
      return { clusterName: "clusterA", remoteCluster: "clusterB", localExecutions: 7n, remoteExecutions: 7n };
    };
    const r = await runCli(["replication", "verify", "-n", "orders", "--cluster", "clusterB"], { admin: { verifyReplication } });
    expect({ asked, code: r.code, out: r.stdout, err: r.stderr }).toEqual({
      asked: [1000, 0],
      code: 0,
      out: "clusterA: 7 executions, clusterB: 7 executions; histories are identical\n",
      err: `NOTE: the remote cluster's ${ORDER_DIFFERS} (do their databases' collations differ?): verifying the whole namespace in one call instead\n`,
    });
    // Any other refusal of a page is the verify's answer.
    const refused = await runCli(["replication", "verify", "-n", "orders", "--cluster", "clusterB"], {
      admin: { verifyReplication: () => { throw new ConnectError("namespace orders is not global", Code.FailedPrecondition); } },
    });
    expect([refused.code, refused.stderr]).toEqual([1, "error: failed_precondition: namespace orders is not global\n"]);
  });

  test("AWholeAnswerStandsAlone: a server from before pages, asked for a later page, answers the whole namespace", async () => {
    const verifyReplication = (req: { nextPageToken: Uint8Array }) =>
      req.nextPageToken.length === 0
        ? { clusterName: "clusterA", remoteCluster: "clusterB", localExecutions: 1000n, remoteExecutions: 1000n, diverging: [run("w1", 2n)], nextPageToken: new TextEncoder().encode("next"), paged: true }
        : { clusterName: "clusterA", remoteCluster: "clusterB", localExecutions: 1005n, remoteExecutions: 1005n, diverging: [run("w1", 2n)] };
    const r = await runCli(["replication", "verify", "-n", "orders", "--cluster", "clusterB"], { admin: { verifyReplication } });
    expect([r.code, r.stdout.split("\n")[0]]).toEqual([1, "clusterA: 1005 executions, clusterB: 1005 executions; 0 missing, 0 extra, 1 diverging"]);
  });
});
