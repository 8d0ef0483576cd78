import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { sql } from "drizzle-orm";
import postgres from "postgres";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createPipelinedTransactions } from "../../src/persistence/pipelined-tx";
import { runStatement } from "../../src/persistence/raw-statements";
import { createTestDatabase } from "../support/postgres";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

const T = { workflowType: "t", taskQueue: "q" };
const stores = await testStores();

// Appends send BEGIN with the run lock and COMMIT right behind the writes on PostgreSQL
// (src/persistence/pipelined-tx.ts): a refusal must still leave nothing behind.
for (const store of stores) {
  describe(`appends on ${store}`, () => {
    let cluster: TestCluster;
    let wf: ReturnType<typeof cluster.client<typeof WorkflowService>>;
    beforeAll(async () => {
      cluster = await startTestCluster({ store, extraYaml: "limits:\n  historyCountLimitError: 3\n  historyCountLimitWarn: 2" });
      wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: "p" });
    });
    afterAll(() => cluster.destroy());

    const requestRows = async (requestId: string) =>
      JSON.stringify(await cluster.server.database.db.execute(sql`select count(*)::int as n from request_ids where request_id = ${requestId}`));

    test("TestRefusedAppendLeavesNeitherItsRequestIdNorEvents", async () => {
      await wf.startWorkflowExecution({ namespace: "p", workflowId: "full", ...T });
      await wf.signalWorkflowExecution({ namespace: "p", workflowExecution: { workflowId: "full" }, signalName: "s", requestId: "fits" });
      await wf.signalWorkflowExecution({ namespace: "p", workflowExecution: { workflowId: "full" }, signalName: "s", requestId: "fits-too" });
      // The claim of "over" is issued before the history limit refuses the events.
      await rejects(
        wf.signalWorkflowExecution({ namespace: "p", workflowExecution: { workflowId: "full" }, signalName: "s", requestId: "over" }),
        Code.FailedPrecondition,
        "over the history limit of 3",
      );
      expect(await requestRows("over")).toContain('"n":0');
      expect(await requestRows("fits")).toContain('"n":1');
      const events = (await wf.getWorkflowExecutionHistory({ namespace: "p", execution: { workflowId: "full" } })).history!.events;
      expect(events.map((e) => Number(e.eventId))).toEqual([1, 2, 3]);
    });

    test("TestConcurrentRetriesOfOneSignalWriteOneEventAndAllAnswerIt", async () => {
      await wf.startWorkflowExecution({ namespace: "p", workflowId: "retried", ...T });
      const answers = await Promise.all(
        Array.from({ length: 8 }, () =>
          wf.signalWorkflowExecution({ namespace: "p", workflowExecution: { workflowId: "retried" }, signalName: "s", requestId: "same" }),
        ),
      );
      expect(new Set(answers.map((a) => a.eventId))).toEqual(new Set([2n]));
      const events = (await wf.getWorkflowExecutionHistory({ namespace: "p", execution: { workflowId: "retried" } })).history!.events;
      expect(events).toHaveLength(2);
      // The retries were answered, not failed: no persistence error is counted for them.
      const metrics = await (await fetch(`${cluster.url}/metrics`)).text();
      expect(metrics).not.toMatch(/persistence_errors\{operation="SignalWorkflowExecution"\} [1-9]/);
    });
  });
}

if (stores.includes("postgres")) {
  describe("pipelined transactions on postgres", () => {
    let database: Awaited<ReturnType<typeof createTestDatabase>>;
    let client: postgres.Sql;
    const rows = async () => (await client`select v from pipelined order by v`).map((r) => r.v as number);
    beforeAll(async () => {
      database = await createTestDatabase();
      client = postgres(database.url, { max: 2, onnotice: () => {} });
      await client`create table pipelined (v int primary key)`;
    });
    afterAll(async () => {
      await client.end({ timeout: 1 });
      await database.drop();
    });
    const txs = () => createPipelinedTransactions(client);
    const insert = (tx: Parameters<Parameters<ReturnType<typeof txs>["run"]>[0]>[0], v: number) => runStatement(tx, "insert into pipelined (v) values ($1)", [v]);

    test("TestWritesIssuedBeforeCommitAreCommitted", async () => {
      await client`truncate pipelined`;
      await txs().run(async (tx, commit) => {
        const done = Promise.all([insert(tx, 1), insert(tx, 2)]);
        commit();
        await done;
      });
      expect(await rows()).toEqual([1, 2]);
    });

    test("TestAFailedStatementAheadOfAPipelinedCommitRollsEverythingBack", async () => {
      await client`truncate pipelined`;
      const failed = txs().run(async (tx, commit) => {
        const done = Promise.all([insert(tx, 3), insert(tx, 3), insert(tx, 4)]);
        commit();
        await done;
      });
      await expect(failed).rejects.toThrow(/duplicate key/);
      expect(await rows()).toEqual([]);
    });

    test("TestAThrowBeforeCommitRollsBackWhatWasIssued", async () => {
      await client`truncate pipelined`;
      const failed = txs().run(async (tx) => {
        void insert(tx, 5);
        throw new Error("refused in JavaScript");
      });
      await expect(failed).rejects.toThrow("refused in JavaScript");
      expect(await rows()).toEqual([]);
      // The connection went back to the pool usable, outside any transaction.
      await txs().run(async (tx) => void (await insert(tx, 6)));
      expect(await rows()).toEqual([6]);
    });

    test("TestAHookBeforeCommitThatThrowsRollsBack", async () => {
      await client`truncate pipelined`;
      const failed = txs().run(async (tx, commit) => {
        const done = insert(tx, 7);
        commit();
        await done;
      }, () => {
        throw new Error("injected");
      });
      await expect(failed).rejects.toThrow("injected");
      expect(await rows()).toEqual([]);
    });
  });
}
