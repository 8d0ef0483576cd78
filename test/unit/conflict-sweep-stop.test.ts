import { describe, expect, test } from "bun:test";
import { createConflictSweep, type ConflictSweepDeps } from "../../replication/conflict-sweep";
import { createLogger } from "../../src/observability/log";
import { eventually } from "../support/eventually";

/** A fake database listing one ZOMBIE run to settle (and no kept branch). */
const zombie = { namespaceId: "ns-1", workflowId: "w", runId: "r" };
const db = {
  selectDistinct: () => ({ from: () => ({ where: async () => [] }) }),
  select: () => ({ from: () => ({ where: async () => [zombie] }) }),
};

describe("stopping the conflict sweep", () => {
  test("TestStopCancelsASettleWaitingForALock: the settle's transaction gets the stop's signal, and stop() returns without waiting for the lock", async () => {
    const signals: (AbortSignal | undefined)[] = [];
    const sweep = createConflictSweep({
      db: db as unknown as ConflictSweepDeps["db"],
      cluster: { clusterName: "clusterA" } as ConflictSweepDeps["cluster"],
      namespaces: { getById: async () => ({ isGlobal: true, activeClusterName: "clusterA" }) } as unknown as ConflictSweepDeps["namespaces"],
      applier: { settle: async () => {} },
      log: createLogger({ level: "error", write: () => {} }),
      // As a transaction whose statement waits for a row lock held elsewhere: it ends only when its signal (if any) cancels it.
      writer: {
        transact: (_operation, _fn, signal) => {
          signals.push(signal);
          return new Promise((_resolve, reject) => signal?.addEventListener("abort", () => reject(signal.reason), { once: true }));
        },
      },
    });
    void sweep.trigger();
    await eventually(() => expect(signals.length).toBe(1), { timeout: 5_000 });
    const stopped = await Promise.race([sweep.stop().then(() => "stopped"), Bun.sleep(2_000).then(() => "still waiting on the lock")]);
    expect(stopped).toBe("stopped");
  });
});
