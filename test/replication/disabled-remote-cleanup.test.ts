import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { and, count, eq, gt, sql } from "drizzle-orm";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { runStatement } from "../../src/persistence/raw-statements";
import { executions, replicationAckLevels, replicationTasks } from "../../src/persistence/schema";
import { startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";
import { addr, connectBothWays, expectSameHistories, globalNamespace } from "./support";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";

for (const store of await testStores()) {
  describe(`a remote disabled past its grace on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    beforeAll(async () => {
      [a, b] = await startClusters(store, [{ serverOptions: { replication: { cleanupIntervalMs: 200, disabledRemoteGraceMs: 1_500 } } }, {}]);
      await connectBothWays(a, b);
      nsId = await globalNamespace(a, b, NS);
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    const wf = () => a.client(WorkflowService);
    const start = (i: number) => wf().startWorkflowExecution({ namespace: NS, workflowId: `w-${i}`, workflowType: "T", taskQueue: "q" });
    const signal = (i: number, name: string) => wf().signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: `w-${i}` }, signalName: name });
    const connectionToB = (enable: boolean) => a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: enable });
    const runsOnB = async () => (await b.server.database.db.select({ n: count() }).from(executions).where(eq(executions.namespaceId, nsId)))[0]!.n;

    test("DisabledRemotePastGraceNoLongerHoldsTasksAndBackfillsWhenEnabled: A deletes what B never acked, B refusing its repair once takes nothing past it, then B ends with every run and event", async () => {
      for (let i = 0; i < 5; i++) await start(i);
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 30_000 });

      await connectionToB(false);
      // Events of runs B holds, and runs B never saw, all written while it is disabled.
      for (let i = 0; i < 5; i++) await signal(i, "while-disabled");
      for (let i = 5; i < 10; i++) await start(i);
      // Past the grace, A's cleanup deletes every task, B's ack or not, and records how far.
      await eventually(async () => expect(await a.server.database.db.$count(replicationTasks)).toBe(0), { timeout: 30_000 });
      const marks = await a.server.database.db.select().from(replicationAckLevels)
        .where(and(eq(replicationAckLevels.remoteCluster, b.name), gt(replicationAckLevels.cleanedThrough, 0)));
      expect(marks.length).toBeGreaterThan(0);

      // B's repair fails (as a crash before its commit would leave it): the try is counted by a
      // sequence, which a rollback does not undo.
      const bdb = b.server.database.db;
      await bdb.execute(sql.raw("create sequence repair_tries"));
      await bdb.execute(sql.raw("create function refuse_repair() returns trigger language plpgsql as $$ begin perform nextval('repair_tries'); raise exception 'repair refused (test)'; end $$"));
      await bdb.execute(sql.raw("create trigger refuse_repair before insert or update on backfill_jobs for each row execute function refuse_repair()"));
      await connectionToB(true);
      const tries = async () => Number((await runStatement(bdb, "select case when is_called then last_value else 0 end as n from repair_tries", []))[0]!.n);
      await eventually(async () => expect(await tries()).toBeGreaterThanOrEqual(2), { timeout: 30_000 });
      // Nothing applied past the tasks it lacks: the runs started while it was disabled are not here.
      expect(await runsOnB()).toBe(5);

      await bdb.execute(sql.raw("drop trigger refuse_repair on backfill_jobs"));
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 60_000 });
      expect(await runsOnB()).toBe(10);

      // Replication goes on as before.
      await start(10);
      await signal(0, "after");
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 30_000 });
    });
  });
}
