import { describe, expect, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { createReplicationManager, type ReplicationManagerDeps, type ReplicationStream } from "../../replication/manager";
import { createLogger } from "../../src/observability/log";
import { eventually } from "../support/eventually";

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
      "[unavailable] the database connection was lost or refused (request id r1); retry",
      "another failure",
    ]);
  });
});
