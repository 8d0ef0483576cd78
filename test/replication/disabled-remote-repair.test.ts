import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { and, count, eq, gt } from "drizzle-orm";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { backfillJobs, executions, replicationAckLevels, replicationTasks } from "../../src/persistence/schema";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";
import { addr, connectBothWays, expectSameHistories, globalNamespace } from "./support";

setDefaultTimeout(serverStartTimeout);

const NS = "invoices";
/**
 * Counted from the disable, past the writes made then and the outbox tail's age limit after them
 * (outbox-tail.ts, maxAgeMs 5 s): A's process holds the tasks it committed that long, and serves a
 * peer's page from them even after the cleanup deleted their rows; enabled within it, B would get
 * the runs from memory, repair or not.
 */
const GRACE_MS = 8_000;

/**
 * Runs started and closed while B was disabled past A's grace, and never written again: their
 * every task is deleted, no later task of theirs reaches B (no gap repair), B holds no backfill
 * job (no join backfill to restart), and A's outbox tail let them go (GRACE_MS): only the repair of the cleaned mark (receiver.ts,
 * repairCleaned) brings them.
 */
for (const store of await testStores()) {
  describe(`runs closed while a remote was disabled past its grace on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    beforeAll(async () => {
      [a, b] = await startClusters(store, [{ serverOptions: { replication: { cleanupIntervalMs: 200, disabledRemoteGraceMs: GRACE_MS } } }, {}]);
      await connectBothWays(a, b);
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    const wf = () => a.client(WorkflowService);
    const run = (i: number) => ({ workflowId: `r-${i}` });
    const connectionToB = (enable: boolean) => a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: enable });
    const runsOnB = async () => (await b.server.database.db.select({ n: count() }).from(executions).where(eq(executions.namespaceId, nsId)))[0]!.n;

    test("TestRunsStartedAndClosedWhileDisabledPastGraceComeBackByTheRepairAlone", async () => {
      await wf().startWorkflowExecution({ namespace: NS, workflowId: "r-0", workflowType: "T", taskQueue: "q" });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 30_000 });

      await connectionToB(false);
      const disabledAt = Date.now();
      for (let i = 1; i <= 5; i++) {
        await wf().startWorkflowExecution({ namespace: NS, workflowId: `r-${i}`, workflowType: "T", taskQueue: "q" });
        await wf().completeWorkflowExecution({ namespace: NS, workflowExecution: run(i) });
      }
      // Else the grace ends while the tail may still hold them.
      expect(Date.now() - disabledAt).toBeLessThan(GRACE_MS - 5_500);
      await eventually(async () => expect(await a.server.database.db.$count(replicationTasks)).toBe(0), { timeout: 30_000 });
      const marks = await a.server.database.db.select().from(replicationAckLevels)
        .where(and(eq(replicationAckLevels.remoteCluster, b.name), gt(replicationAckLevels.cleanedThrough, 0)));
      expect(marks.length).toBeGreaterThan(0);
      expect(await b.server.database.db.$count(backfillJobs)).toBe(0);
      expect(await runsOnB()).toBe(1);

      // Enabled, and nothing written after: what B lacks comes only from the mark's repair.
      await connectionToB(true);
      await eventually(async () => {
        expect(await runsOnB()).toBe(6);
        await expectSameHistories(a, b, nsId);
      }, { timeout: 60_000 });
      const closed = await b.server.database.db.select({ n: count() }).from(executions)
        .where(and(eq(executions.namespaceId, nsId), eq(executions.status, "COMPLETED")));
      expect(closed[0]!.n).toBe(5);
    });
  });
}
