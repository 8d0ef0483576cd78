import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { eq } from "drizzle-orm";
import { ackKey, outboundAcks, saveOutboundAcks } from "../../replication/ack-levels";
import { createGracefulFailover } from "../../replication/failover";
import { createFailoverTargetRecheck } from "../../replication/failover-target";
import { createRemoteClientPool } from "../../src/cluster/remote-client";
import type { TernError } from "../../src/errors";
import { advanceAckLevel, namespaceQueueMax } from "../../replication/namespace-queue";
import { createClusterDirectory } from "../../src/cluster/directory";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createEventNotifier } from "../../src/history/notifier";
import { createNamespaceRegistry } from "../../src/namespace/registry";
import { namespaces, replicationAckLevels } from "../../src/persistence/schema";
import { eventually } from "../support/eventually";
import { holdingReads } from "../support/holding-reads";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores, type StoreKind } from "../support/stores";
import { lastTaskIds } from "../replication/support";
import { ackGate, addr, startOrdersPair } from "./mesh";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

for (const store of await testStores()) {
  describe(`graceful failover's wait for the target on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    beforeAll(async () => {
      [a, b] = await startOrdersPair(store);
    });
    afterAll(() => Promise.all([a, b].map((x) => x.destroy())));

    test("AnAckSavedWhileTheWaitReadsTheAcksWakesIt (no wait for the re-read)", async () => {
      // B pulls no more: its acks stay behind the write below until this test saves them.
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a), enableRemoteClusterConnection: false });
      await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w", workflowType: "t", taskQueue: "q" });
      const db = a.server.database.db;
      const wake = createEventNotifier();
      const hold = { on: false, ms: 400, held: 0 };
      const failover = createGracefulFailover({
        db: holdingReads(db, hold, (table) => table === replicationAckLevels),
        namespaces: createNamespaceRegistry({ db, clusters: createClusterDirectory(db, a.server.cluster) }),
        clusters: createClusterDirectory(db, a.server.cluster),
        notifier: wake,
        log: a.server.log,
        // Past the failover's 20 s: only the wake can end its wait in a switch.
        recheckMs: 60_000,
        // Its lock as a server's: without it, A's reset of abandoned HANDOVERs (every 2 s) found
        // this failover's lock free and put the namespace back to NORMAL under it (CI, 2026-12-07).
        withSessionLock: (key, fn, taken) => a.server.database.withSessionLock(key, fn, taken),
      });
      hold.on = true;
      const t0 = performance.now();
      // As asked of B itself (targetWaits): B, pulling nothing, would not ack the switch, and the
      // answer's wait for that (up to 5 s) is not this test's.
      const running = failover.run("orders", "clusterB", 20_000, undefined, true).then((r) => ({ r, at: performance.now() - t0 }));
      // The wait's read of B's acks has its answer (behind) and holds it: B acks everything now. It
      // is the second read held: the first is the check of B's last namespace poll, before HANDOVER.
      await eventually(() => expect(hold.held).toBeGreaterThan(1), { interval: 5 });
      hold.on = false;
      await saveOutboundAcks(db, "clusterB", await lastTaskIds(a));
      const nsMax = await namespaceQueueMax(db);
      await advanceAckLevel(db, { remote: "clusterB", direction: "outbound", queue: "namespace", shardId: 0 }, nsMax, nsMax);
      wake.notify(ackKey("clusterB"));
      const { r, at } = await running;
      expect(r.namespace.activeClusterName).toBe("clusterB");
      // Woken (the re-read is a minute away, past the failover's 20 s): at once, within half of it
      // (the span holds the test's own reads and writes).
      expect(at).toBeLessThan(10_000);
    });
  });

  describe(`a stopping server and a graceful failover still waiting for its target, on ${store}`, () => {
    const { pair, gate } = ackGatedPair(store);

    test("TheFailoverIsAbandonedBeforeTheDatabaseCloses: back to NORMAL, the caller told why", async () => {
      const { a } = pair;
      // B holds its acks: the failover waits for acks that do not come.
      gate.close();
      await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w", workflowType: "t", taskQueue: "q" });
      const op = a.client(OperatorService);
      const state = async () => (await ordersRow(a)).replicationState;
      const failing = op.failoverNamespace({ namespace: "orders", targetCluster: "clusterB", timeout: { seconds: 60n } });
      failing.catch(() => {});
      await eventually(async () => expect(await state()).toBe("HANDOVER"));
      const t0 = performance.now();
      await a.server.endLongPolls();
      // At once, not at the failover's 60 s.
      expect(performance.now() - t0).toBeLessThan(10_000);
      await rejects(failing, Code.Unavailable, "cluster clusterA is shutting down: graceful failover of namespace orders to clusterB abandoned");
      expect(await state()).toBe("NORMAL");
      await rejects(op.failoverNamespace({ namespace: "orders", targetCluster: "clusterB" }), Code.Unavailable, "no graceful failover starts here now");
    });
  });

  describe(`a target that does not answer just before the switch, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    beforeAll(async () => {
      [a, b] = await startOrdersPair(store);
    });
    afterAll(() => Promise.all([a, b].map((x) => x.destroy())));

    test("TestGracefulFailoverWhoseTargetDoesNotAnswerTheLastCheckSwitchesNothing", async () => {
      const db = a.server.database.db;
      const clusters = createClusterDirectory(db, a.server.cluster);
      // B acks the handover as ever; only the question just before the switch goes unanswered.
      const unanswered = ((_: unknown, init?: RequestInit) =>
        new Promise<Response>((_, reject) => init?.signal?.addEventListener("abort", () => reject(init.signal!.reason)))) as typeof fetch;
      const failover = createGracefulFailover({
        db, clusters, notifier: createEventNotifier(), log: a.server.log,
        namespaces: createNamespaceRegistry({ db, clusters }),
        targetMovedOn: createFailoverTargetRecheck({ clusters, clients: createRemoteClientPool(unanswered), timeoutMs: 300 }),
        withSessionLock: (key, fn, taken) => a.server.database.withSessionLock(key, fn, taken),
      });
      const refused = await failover.run("orders", "clusterB", 20_000, undefined, true).then(() => undefined, (e: TernError) => e);
      expect([refused?.kind, refused?.message]).toEqual(["unavailable", expect.stringContaining("cluster clusterB did not answer for namespace orders just before the switch of its graceful failover")]);
      expect(await ordersRow(a)).toMatchObject({ replicationState: "NORMAL", activeClusterName: "clusterA", failoverVersion: 1 });
    });
  });

  describe(`a graceful failover past its caller's deadline, on ${store}`, () => {
    const { pair, gate } = ackGatedPair(store);

    test("TestFailoverPastItsDeadline: back to NORMAL at the deadline, and no switch once the target caught up", async () => {
      const { a } = pair;
      // B holds its acks: the failover waits for acks that do not come before the call's deadline.
      gate.close();
      await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "w", workflowType: "t", taskQueue: "q" });
      const failing = a.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: "clusterB", timeout: { seconds: 60n } }, { timeoutMs: 1000 });
      await rejects(failing, Code.DeadlineExceeded, "");
      // Not at the failover's own 60 s timeout.
      await eventually(async () => expect((await ordersRow(a)).replicationState).toBe("NORMAL"), { timeout: 5000 });
      gate.open();
      const last = await lastTaskIds(a);
      await eventually(async () => {
        const acked = await outboundAcks(a.server.database.db, "clusterB");
        for (const [shard, id] of last) expect(Number(acked.get(shard) ?? 0)).toBeGreaterThanOrEqual(id);
      }, { timeout: 20_000 });
      expect(await ordersRow(a)).toMatchObject({ replicationState: "NORMAL", activeClusterName: "clusterA" });
    });
  });
}

/**
 * For one describe: clusterA and clusterB on store (startOrdersPair), B's acks behind a gate the
 * tests close; after, the gate opened and both destroyed. pair is filled once beforeAll ran.
 */
function ackGatedPair(store: StoreKind) {
  const acks = ackGate();
  const pair = {} as { a: TestCluster; b: TestCluster };
  beforeAll(async () => {
    [pair.a, pair.b] = await startOrdersPair(store, [{}, acks.options]);
  });
  afterAll(() => acks.gate.open());
  afterAll(() => Promise.all([pair.a, pair.b].map((x) => x.destroy())));
  return { pair, gate: acks.gate };
}

/** Namespace orders' row on cluster c. */
const ordersRow = async (c: TestCluster) => (await c.server.database.db.select().from(namespaces).where(eq(namespaces.name, "orders")))[0]!;
