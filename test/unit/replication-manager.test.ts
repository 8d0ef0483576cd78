import { describe, expect, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectionStateSeries, createReplicationManager, type ReplicationManagerDeps, type ReplicationStream, type StreamReport } from "../../replication/manager";
import { createLogger } from "../../src/observability/log";
import { eventually } from "../support/eventually";
import { createGate } from "../support/gate";

/** The one remote cluster a fake database lists. */
const remoteRow = {
  clusterName: "clusterA", clusterId: "a", isCurrent: false, rpcAddress: "127.0.0.1:1", historyShardCount: 1,
  failoverVersionIncrement: 10, initialFailoverVersion: 1, isGlobalNamespaceEnabled: true, enableConnection: true,
};
const db = { select: () => ({ from: () => ({ where: async () => [remoteRow] }) }) };

/** A manager over one stream that fails with each of errors in turn, then waits to be stopped; and its log lines. */
function managerFailing(errors: Error[]) {
  const lines: { msg: string; error?: string }[] = [];
  const stream: ReplicationStream = {
    name: "history",
    async run(_remote, signal) {
      const e = errors.shift();
      if (e) throw e;
      await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
    },
  };
  const manager = createReplicationManager({
    db, clients: { get: () => ({}) }, streamsFor: () => [stream],
    log: createLogger({ write: (l) => lines.push(JSON.parse(l)) }),
  } as unknown as ReplicationManagerDeps);
  return { manager, lines, errors };
}

describe("replication manager", () => {
  test("a remote's failure repeated with a new request id each time is logged once", async () => {
    const unavailable = (id: string) => new ConnectError(`the database connection was lost or refused (request id ${id}); retry`, Code.Unavailable);
    const { manager, lines, errors } = managerFailing([unavailable("r1"), unavailable("r2"), unavailable("r3"), new Error("another failure")]);
    await manager.start();
    await eventually(() => expect(errors).toEqual([]), { timeout: 5_000 });
    await manager.stop();
    expect(lines.filter((l) => l.msg === "replication stream failed").map((l) => l.error)).toEqual([
      "unavailable: the database connection was lost or refused (request id r1); retry",
      "another failure",
    ]);
  });
});

describe("the manager's start", () => {
  test("TestAFailedFirstReadOfTheRemotesIsRetried: the streams start once a read goes through, and start() does not reject", async () => {
    // The database refuses the first two reads (out of connection slots at a server's start, say).
    let reads = 0;
    const flaky = {
      select: () => ({ from: () => ({ where: async () => {
        reads += 1;
        if (reads <= 2) throw new Error("remaining connection slots are reserved for non-replication superuser connections");
        return [remoteRow];
      } }) }),
    };
    const lines: { msg: string }[] = [];
    let runs = 0;
    const stream: ReplicationStream = {
      name: "history",
      async run(_remote, signal) {
        runs += 1;
        await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
      },
    };
    const manager = createReplicationManager({
      db: flaky, clients: { get: () => ({}) }, streamsFor: () => [stream], log: createLogger({ write: (l) => lines.push(JSON.parse(l)) }),
    } as unknown as ReplicationManagerDeps);
    await manager.start();
    expect(reads).toBe(3);
    await eventually(() => expect(runs).toBe(1));
    expect(lines.filter((l) => l.msg.startsWith("reading the remote clusters failed"))).toHaveLength(2);
    await manager.stop();
  });

  test("a manager stopped while its first read keeps failing ends its retries", async () => {
    let reads = 0;
    const down = { select: () => ({ from: () => ({ where: async () => { reads += 1; throw new Error("connect ECONNREFUSED"); } }) }) };
    const manager = createReplicationManager({
      db: down, clients: { get: () => ({}) }, streamsFor: () => [], log: createLogger({ write: () => {} }),
    } as unknown as ReplicationManagerDeps);
    const started = manager.start();
    await eventually(() => expect(reads).toBeGreaterThan(1));
    await manager.stop();
    await started;
    const after = reads;
    await Bun.sleep(2_100); // past the longest backoff (2 s): no retry comes
    expect(reads).toBe(after);
  });
});

describe("a stream's restarts", () => {
  test("come 100 ms after a failure of a stream that was well, however many failures before had grown the backoff", async () => {
    const runsAt: number[] = [];
    let fail = (_e: Error) => {};
    const stream: ReplicationStream = {
      name: "history",
      async run(_remote, signal, report) {
        runsAt.push(performance.now());
        // Five failures grow the backoff to 1 s; the sixth run is well until the test ends it.
        if (runsAt.length <= 5) throw new Error("connection refused");
        report.ok();
        await new Promise((_, reject) => ((fail = reject), signal.addEventListener("abort", () => reject(new Error("stopped")), { once: true })));
      },
    };
    const manager = createReplicationManager({
      db, clients: { get: () => ({}) }, streamsFor: () => [stream], log: createLogger({ write: () => {} }),
    } as unknown as ReplicationManagerDeps);
    await manager.start();
    await eventually(() => expect(runsAt.length).toBe(6), { timeout: 5_000 });
    const failedAt = performance.now();
    fail(new Error("connection reset"));
    await eventually(() => expect(runsAt.length).toBe(7));
    await manager.stop();
    expect(runsAt[6]! - failedAt).toBeLessThan(500);
  });
});

describe("a remote's connection state", () => {
  test("is a failing stream's error while another stream of the remote succeeds, and connected once none fails", async () => {
    const reports = new Map<string, StreamReport>();
    const stream = (name: string): ReplicationStream => ({
      name,
      async run(_remote, signal, report) {
        reports.set(name, report);
        await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
      },
    });
    const manager = createReplicationManager({
      db, clients: { get: () => ({}) }, streamsFor: () => [stream("namespace"), stream("history"), stream("backfill")], log: createLogger({ write: () => {} }),
    } as unknown as ReplicationManagerDeps);
    await manager.start();
    await eventually(() => expect(reports.size).toBe(3));
    expect(manager.connectionState("clusterA")).toBe("connecting");

    reports.get("history")!.failed(new Error("cluster clusterA sent nothing"));
    // The namespace poll that comes back after (each 20 s) does not make the remote connected.
    reports.get("namespace")!.ok();
    expect(manager.connectionState("clusterA")).toBe("error: cluster clusterA sent nothing");
    reports.get("history")!.ok();
    // A stream that never reported (backfill, idle) leaves the state to the others.
    expect(manager.connectionState("clusterA")).toBe("connected");
    await manager.stop();
  });
});

describe("replication_connection_state", () => {
  test("TestAConnectionStateShowsWhileARemotesStreamsRestart: exactly one state is 1 (unknown) while a moved remote's old stream ends, connected again once its new one answers", async () => {
    // The remote's address changes: its stream is stopped and started again, the old one slow to end (its call in flight).
    const row = { ...remoteRow };
    const moving = { select: () => ({ from: () => ({ where: async () => [row] }) }) };
    const ending = createGate();
    let runs = 0;
    const stream: ReplicationStream = {
      name: "history",
      async run(_remote, signal, report) {
        runs += 1;
        report.ok();
        await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
        await ending.held;
      },
    };
    const manager = createReplicationManager({
      db: moving, clients: { get: () => ({}) }, streamsFor: () => [stream], log: createLogger({ write: () => {} }),
    } as unknown as ReplicationManagerDeps);
    const stateOne = () => connectionStateSeries(manager).filter((s) => s.value === 1).map((s) => s.labels.state);
    await manager.start();
    await eventually(() => expect(stateOne()).toEqual(["connected"]));

    ending.close();
    row.rpcAddress = "127.0.0.1:2";
    const refreshed = manager.refresh();
    await eventually(() => expect(manager.connectionState("clusterA")).toBe("unknown"));
    expect(stateOne()).toEqual(["unknown"]);
    expect(connectionStateSeries(manager)).toHaveLength(5);
    ending.open();
    await refreshed;
    await eventually(() => expect([runs, stateOne()]).toEqual([2, ["connected"]]));
    await manager.stop();
  });
});
