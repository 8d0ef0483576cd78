import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { eq } from "drizzle-orm";
import { ulid } from "ulid";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createClusterDirectory } from "../../src/cluster/directory";
import { createEventNotifier } from "../../src/history/notifier";
import { createTimerQueue, type TimerQueue } from "../../src/history/timer-queue";
import { createWriter } from "../../src/history/writer";
import { createNamespaceRegistry } from "../../src/namespace/registry";
import { createLogger } from "../../src/observability/log";
import { createMetrics } from "../../src/observability/metrics";
import { executions, namespaces, timerTasks } from "../../src/persistence/schema";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

for (const store of await testStores()) {
  describe(`timer queue on a passive cluster (${store})`, () => {
    let c: TestCluster;
    let queue: TimerQueue;
    const registry = () => createNamespaceRegistry({ db: c.server.database.db, clusters: createClusterDirectory(c.server.database.db, c.server.cluster), cacheTtlMs: 60_000 });
    let names: ReturnType<typeof registry>;

    beforeAll(async () => {
      c = await startTestCluster({ store, name: "clusterT", initialFailoverVersion: 1 });
      const db = c.server.database.db;
      names = registry();
      const log = createLogger({ level: "error" });
      const writer = createWriter({ db, cluster: c.server.cluster, limits: c.config.limits, metrics: createMetrics(), log, now: () => new Date() });
      queue = createTimerQueue({
        db, writer, namespaces: names, notifier: createEventNotifier(), metrics: createMetrics(), log,
        currentCluster: "clusterT", now: () => new Date(), pollMs: 60_000,
      });
    });
    afterAll(async () => {
      await queue.stop();
      await c.destroy();
    });

    test("PassiveTimersDoNotSpin: 150 due timers of a namespace active elsewhere are skipped, then fire on rescan after failover", async () => {
      const db = c.server.database.db;
      await c.client(WorkflowService).registerNamespace({ namespace: "t", isGlobalNamespace: true });
      const wf = c.client(WorkflowService);
      const hour = create(DurationSchema, { seconds: 3600n });
      const runs: { workflowId: string; runId: string }[] = [];
      for (const workflowId of ["t-0", "t-1", "t-2"]) {
        const { runId } = await wf.startWorkflowExecution({ namespace: "t", workflowId, workflowType: "T", taskQueue: "q", workflowExecutionTimeout: hour });
        runs.push({ workflowId, runId });
      }
      const [ns] = await db.select().from(namespaces).where(eq(namespaces.name, "t"));
      const setActive = (cluster: string) => db.update(namespaces).set({ activeClusterName: cluster }).where(eq(namespaces.id, ns!.id));
      await setActive("clusterElsewhere");
      // Many due timers per run: more than one page of the scan.
      const past = new Date(Date.now() - 60_000);
      await db.insert(timerTasks).values(Array.from({ length: 150 }, (_, i) => ({
        id: ulid(), shardId: 1, fireAt: past, kind: "WORKFLOW_TIMEOUT", namespaceId: ns!.id, ...runs[i % 3]!, version: ns!.failoverVersion,
      })));
      queue.start();
      await queue.rescan();
      expect(await db.$count(timerTasks, eq(timerTasks.fireAt, past))).toBe(150);

      // Active here in the database while the registry still says elsewhere: the scan must still end.
      await names.getById(ns!.id);
      await setActive("clusterT");
      await queue.rescan();
      expect(await db.$count(timerTasks, eq(timerTasks.fireAt, past))).toBe(150);

      names.invalidate();
      await queue.rescan();
      expect(await db.$count(timerTasks, eq(timerTasks.fireAt, past))).toBe(0);
      const states = await db.select({ status: executions.status }).from(executions).where(eq(executions.namespaceId, ns!.id));
      expect(states.map((s) => s.status)).toEqual(["TIMED_OUT", "TIMED_OUT", "TIMED_OUT"]);
    });

    test("ATimerWhoseNamespaceCouldNotBeReadIsKept: a lost connection is not a namespace gone", async () => {
      const db = c.server.database.db;
      await c.client(WorkflowService).registerNamespace({ namespace: "blip" });
      const { runId } = await c.client(WorkflowService).startWorkflowExecution({
        namespace: "blip", workflowId: "w", workflowType: "T", taskQueue: "q", workflowExecutionTimeout: create(DurationSchema, { seconds: 3600n }),
      });
      await db.update(timerTasks).set({ fireAt: new Date(Date.now() - 1000) }).where(eq(timerTasks.runId, runId));
      // The namespace read fails once, as on a connection PostgreSQL just ended; the statements after it go through.
      let failures = 1;
      const own = registry();
      const blinking = { ...own, getById: (id: string) => (failures-- > 0 ? Promise.reject(Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" })) : own.getById(id)) };
      const log = createLogger({ level: "error" });
      const writer = createWriter({ db, cluster: c.server.cluster, limits: c.config.limits, metrics: createMetrics(), log, now: () => new Date() });
      const blinkingQueue = createTimerQueue({
        db, writer, namespaces: blinking, notifier: createEventNotifier(), metrics: createMetrics(), log,
        currentCluster: "clusterT", now: () => new Date(), pollMs: 60_000,
      });
      try {
        blinkingQueue.start();
        await blinkingQueue.rescan();
        await blinkingQueue.rescan();
      } finally {
        await blinkingQueue.stop();
      }
      const [run] = await db.select({ status: executions.status }).from(executions).where(eq(executions.runId, runId));
      expect(run!.status).toBe("TIMED_OUT");
      expect(await db.$count(timerTasks, eq(timerTasks.runId, runId))).toBe(0);
    });
  });
}
