import { describe, expect, test } from "bun:test";
import { createAckSender } from "../../replication/ack-sender";
import type { RemoteCluster } from "../../replication/manager";
import { createLogger } from "../../src/observability/log";
import { eventually } from "../support/eventually";

describe("ack sender", () => {
  test("while acks cannot be made durable (this cluster's database shutting down) it backs off and logs the failure once", async () => {
    const lines: { msg: string }[] = [];
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
      durable: () => durable(), log: createLogger({ write: (l) => lines.push(JSON.parse(l)) }), ackIntervalMs: 10, maxRetryMs: 200,
    });
    acks.set(1, 7);
    sender.schedule();
    await Bun.sleep(600);
    // Every 10 ms that would be about 60 calls; doubling from 100 ms to 200 ms, at most 4.
    expect(calls).toBeGreaterThanOrEqual(2);
    expect(calls).toBeLessThanOrEqual(5);
    expect(lines.map((l) => l.msg)).toEqual(["sending replication acks failed; they go with the next"]);

    // The database back: the held acks go with the next call.
    durable = () => Promise.resolve();
    await eventually(() => expect(acked).toEqual([[7n]]), { timeout: 2_000 });
    abort.abort();
    sender.stop();
  });
});
