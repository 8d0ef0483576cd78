import { describe, expect, test } from "bun:test";
import { createAckSender } from "../../replication/ack-sender";
import type { RemoteCluster } from "../../replication/manager";
import { eventually } from "../support/eventually";

describe("ack sender", () => {
  test("while acks cannot be made durable (this cluster's database shutting down) it backs off, reporting each failure, then that they went", async () => {
    const failures: string[] = [];
    let sent = 0;
    let calls = 0;
    let durable: () => Promise<void> = () => {
      calls++;
      return Promise.reject(Object.assign(new Error("the database system is shutting down"), { code: "57P03", severity: "FATAL" }));
    };
    const acked: bigint[][] = [];
    const remote = { name: "clusterA", clients: { admin: { ackReplicationTasks: async (req: { ackedTaskIds: bigint[] }) => void acked.push(req.ackedTaskIds) } } };
    const acks = new Map([[1, 0]]);
    const abort = new AbortController();
    const sender = createAckSender({
      remote: remote as unknown as RemoteCluster, clusterName: "clusterB", shardIds: [1], acks, signal: abort.signal,
      durable: () => durable(), failed: (e) => failures.push((e as Error).message), sent: () => sent++, ackIntervalMs: 10, timeoutMs: 1_000, maxRetryMs: 200,
    });
    acks.set(1, 7);
    sender.schedule();
    await Bun.sleep(600);
    // Every 10 ms that would be about 60 calls; doubling from 100 ms to 200 ms, at most 4.
    expect(calls).toBeGreaterThanOrEqual(2);
    expect(calls).toBeLessThanOrEqual(5);
    expect(failures.length).toBe(calls);
    expect(new Set(failures)).toEqual(new Set(["the database system is shutting down"]));
    expect(sent).toBe(0);

    // The database back: the held acks go with the next call.
    durable = () => Promise.resolve();
    await eventually(() => expect(acked).toEqual([[7n]]), { timeout: 2_000 });
    expect(sent).toBe(1);
    abort.abort();
    sender.stop();
  });

  test("a failure of this cluster's database (making the applies durable) is told from a call the source failed", async () => {
    // The stream's state read "acks to cluster clusterA failed ...: read ECONNRESET" for its own database's crash.
    const failures: { message: string; ownDatabase: boolean }[] = [];
    let durableFails = true;
    const remote = { name: "clusterA", clients: { admin: { ackReplicationTasks: async () => Promise.reject(new Error("deadline_exceeded")) } } };
    const acks = new Map([[1, 0]]);
    const abort = new AbortController();
    const sender = createAckSender({
      remote: remote as unknown as RemoteCluster, clusterName: "clusterB", shardIds: [1], acks, signal: abort.signal,
      durable: async () => {
        if (durableFails) throw Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET", syscall: "read" });
      },
      failed: (e, ownDatabase) => void failures.push({ message: (e as Error).message, ownDatabase }), sent: () => {}, ackIntervalMs: 10, timeoutMs: 1_000, maxRetryMs: 50,
    });
    acks.set(1, 7);
    sender.schedule();
    await eventually(() => expect(failures.length).toBeGreaterThan(0), { timeout: 2_000 });
    durableFails = false;
    await eventually(() => expect(failures.at(-1)!.message).toBe("deadline_exceeded"), { timeout: 2_000 });
    abort.abort();
    sender.stop();
    expect(failures[0]).toEqual({ message: "read ECONNRESET", ownDatabase: true });
    expect(failures.at(-1)).toEqual({ message: "deadline_exceeded", ownDatabase: false });
  });
});
