import { describe, expect, test } from "bun:test";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { runCli } from "./harness";

/** The deadline a call came with, as its handler sees it (ms left, a little under what was sent). */
function recorder() {
  const seen: (number | undefined)[] = [];
  return { seen, record: (ctx: HandlerContext) => void seen.push(ctx.timeoutMs()) };
}

/** True when ms is the deadline expected, less what the in-process call took. */
const near = (ms: number | undefined, expected: number) => ms !== undefined && ms <= expected && ms > expected - 2_000;

/** A handler that never answers: its call ends only at its deadline. */
const never = (_req: unknown, ctx: HandlerContext) => new Promise<never>((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)));

const orders = { name: "orders", replicationConfig: { activeClusterName: "clusterB" }, failoverVersion: 102n };

describe("the CLI's deadline", () => {
  test("every call has one by default (30s), --rpc-timeout changes it, 0 removes it", async () => {
    const { seen, record } = recorder();
    const operator = { describeCluster: (_: unknown, ctx: HandlerContext) => (record(ctx), { cluster: { clusterName: "clusterA" } }) };
    expect((await runCli(["operator", "cluster", "describe"], { operator })).code).toBe(0);
    expect((await runCli(["operator", "cluster", "describe", "--rpc-timeout", "2m"], { operator })).code).toBe(0);
    expect((await runCli(["--rpc-timeout=0", "operator", "cluster", "describe"], { operator })).code).toBe(0);
    expect([near(seen[0], 30_000), near(seen[1], 120_000), seen[2]]).toEqual([true, true, undefined]);
  });

  test("a graceful failover gets its --timeout (or the server's 10s) on top; a follow its long poll's 20s; each page of a verify and a namespace delete 10 minutes", async () => {
    const { seen, record } = recorder();
    const operator = { failoverNamespace: (_: unknown, ctx: HandlerContext) => (record(ctx), { namespace: orders }) };
    expect((await runCli(["operator", "namespace", "failover", "-n", "orders", "--to", "clusterB", "--timeout", "2m"], { operator })).code).toBe(0);
    expect((await runCli(["operator", "namespace", "failover", "-n", "orders", "--to", "clusterB"], { operator })).code).toBe(0);
    let waitTimeout: bigint | undefined;
    const workflow = {
      getWorkflowExecutionHistory: (req: { waitNewEvent: boolean; waitTimeout?: { seconds: bigint } }, ctx: HandlerContext) => {
        if (req.waitNewEvent) (record(ctx), (waitTimeout = req.waitTimeout?.seconds));
        return { history: { events: [] }, nextPageToken: new Uint8Array(0) };
      },
    };
    expect((await runCli(["workflow", "show", "-w", "w1", "--follow", "--rpc-timeout", "5s"], { workflow })).code).toBe(0);
    const admin = { verifyReplication: (_: unknown, ctx: HandlerContext) => (record(ctx), {}) };
    expect((await runCli(["replication", "verify", "-n", "orders", "--cluster", "clusterB"], { admin })).code).toBe(0);
    const deleting = { deleteNamespace: (_: unknown, ctx: HandlerContext) => (record(ctx), { deletedNamespace: "orders" }) };
    expect((await runCli(["operator", "namespace", "delete", "-n", "orders", "--yes"], { operator: deleting })).code).toBe(0);
    expect([near(seen[0], 150_000), near(seen[1], 40_000), near(seen[2], 25_000), waitTimeout, near(seen[3], 630_000), near(seen[4], 630_000)]).toEqual([true, true, true, 20n, true, true]);
  });

  test("a call not answered within it ends with exit 1 and a line naming the address and the deadline", async () => {
    const r = await runCli(["--address", "10.0.0.5:8233", "operator", "cluster", "describe", "--rpc-timeout", "300ms"], { operator: { describeCluster: never } });
    expect([r.code, r.stderr]).toEqual([1, "error: tern at http://10.0.0.5:8233 did not answer within 300ms (the call's deadline; --rpc-timeout sets it, 0 for none)\n"]);
    const failover = await runCli(["operator", "namespace", "failover", "-n", "orders", "--to", "clusterB", "--timeout", "200ms", "--rpc-timeout", "100ms"], { operator: { failoverNamespace: never } });
    expect([failover.code, failover.stderr]).toEqual([1, "error: tern at http://127.0.0.1:7233 did not answer within 300ms (the call's deadline; --rpc-timeout sets it, 0 for none)\n"]);
    const proxied = await runCli(["--address", "http://ops:s3cret@10.0.0.5:8233", "operator", "cluster", "describe", "--rpc-timeout", "300ms"], { operator: { describeCluster: never } });
    expect([proxied.code, proxied.stderr]).toEqual([1, "error: tern at http://ops:***@10.0.0.5:8233 did not answer within 300ms (the call's deadline; --rpc-timeout sets it, 0 for none)\n"]);
  });

  test("a DEADLINE_EXCEEDED the server answers before the deadline keeps its own words", async () => {
    const operator = { describeCluster: () => Promise.reject(new ConnectError("clusterB did not answer", Code.DeadlineExceeded)) };
    const r = await runCli(["operator", "cluster", "describe"], { operator });
    expect([r.code, r.stderr]).toEqual([1, "error: deadline_exceeded: clusterB did not answer\n"]);
  });

  test("a bad --rpc-timeout is a usage error", async () => {
    const r = await runCli(["operator", "cluster", "describe", "--rpc-timeout", "soon"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toStartWith('error: --rpc-timeout: invalid duration "soon"');
  });

  test("an --rpc-timeout past what a timer can wait (about 24.8 days) is a usage error naming the limit, not a call with no deadline", async () => {
    const { seen, record } = recorder();
    const operator = { describeCluster: (_: unknown, ctx: HandlerContext) => (record(ctx), { cluster: { clusterName: "clusterA" } }) };
    const r = await runCli(["operator", "cluster", "describe", "--rpc-timeout", "30d"], { operator });
    expect([r.code, r.stderr.split("\n")[0], seen]).toEqual([2, "error: --rpc-timeout: 30d is longer than the longest deadline, 2147483647 ms (about 24.8 days; 0 for none)", []]);
    expect((await runCli(["operator", "cluster", "describe", "--rpc-timeout", "2147483647ms"], { operator })).code).toBe(0);
    expect(near(seen[0], 2 ** 31 - 1)).toBe(true);
  });
});
