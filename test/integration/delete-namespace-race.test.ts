import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { sql } from "drizzle-orm";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "t", taskQueue: "q" };
const TABLES = ["executions", "history_events", "request_ids", "timer_tasks", "replication_tasks"];

for (const store of await testStores()) {
  describe(`deleting a namespace while writes land on ${store}`, () => {
    let cluster: TestCluster;
    // A start of this workflow id waits here, its statements issued, before its commit.
    let held: { workflowId: string; entered: () => void; release: Promise<void> } | undefined;
    beforeAll(async () => {
      cluster = await startTestCluster({
        store,
        serverOptions: {
          beforeCommit: (operation) => {
            if (operation !== "CreateWorkflowExecution" || !held) return;
            held.entered();
            return held.release;
          },
        },
      });
    });
    afterAll(() => cluster.destroy());

    /** Rows of the namespace id left in each table. */
    const leftRows = async (namespaceId: string) => {
      const counts: Record<string, number> = {};
      for (const t of TABLES) {
        const rows = (await cluster.server.database.db.execute(sql`select count(*)::int as n from ${sql.raw(t)} where namespace_id = ${namespaceId}`)) as unknown;
        counts[t] = ((rows as { rows?: { n: number }[] }).rows ?? (rows as { n: number }[]))[0]!.n;
      }
      return counts;
    };

    for (const global of [false, true]) {
      const name = global ? "doomed-global" : "doomed-local";
      test(`TestDeleteNamespaceRacingStart: a ${global ? "global" : "local"} namespace's delete takes an acknowledged start in flight with it`, async () => {
        const wf = cluster.client(WorkflowService);
        const { namespace } = await wf.registerNamespace({ namespace: name, isGlobalNamespace: global });
        await wf.startWorkflowExecution({ namespace: name, workflowId: "before", ...T, workflowExecutionTimeout: { seconds: 3600n } });
        let entered!: () => void;
        const inFlight = new Promise<void>((r) => (entered = r));
        let release!: () => void;
        held = { workflowId: "racing", entered, release: new Promise<void>((r) => (release = r)) };
        const start = wf.startWorkflowExecution({ namespace: name, workflowId: "racing", ...T, workflowExecutionTimeout: { seconds: 3600n } });
        await inFlight;
        const deleted = cluster.client(OperatorService).deleteNamespace({ namespace: name });
        // The delete must wait for the start's commit (or the start must fail): given half a second,
        // a delete that does not wait is done by then.
        await Promise.race([deleted.catch(() => {}), new Promise((r) => setTimeout(r, 500))]);
        held = undefined;
        release();
        const [started, del] = await Promise.allSettled([start, deleted]);
        expect(del.status).toBe("fulfilled");
        expect(await leftRows(namespace!.namespaceInfo!.id)).toEqual(Object.fromEntries(TABLES.map((t) => [t, 0])));
        expect((del as PromiseFulfilledResult<{ deletedExecutions: bigint }>).value.deletedExecutions).toBe(started.status === "fulfilled" ? 2n : 1n);
        await rejects(wf.startWorkflowExecution({ namespace: name, workflowId: "after", ...T }), Code.NotFound, `namespace ${name} not found`);
      });
    }

    test("TestDeleteNamespaceRacingUpdatesAndWrites: each call succeeds or is refused by name, none is INTERNAL (a deadlock)", async () => {
      const wf = cluster.client(WorkflowService);
      const op = cluster.client(OperatorService);
      const answers = new Set<string>();
      for (let i = 0; i < 8; i++) {
        const name = `contended-${i}`;
        await wf.registerNamespace({ namespace: name, isGlobalNamespace: true });
        await wf.startWorkflowExecution({ namespace: name, workflowId: "w", ...T, workflowExecutionTimeout: { seconds: 3600n } });
        const calls = [
          ...[1, 2, 3].map((k) => wf.updateNamespace({ namespace: name, description: `d${k}` })),
          ...[1, 2, 3].map(() => wf.signalWorkflowExecution({ namespace: name, workflowExecution: { workflowId: "w" }, signalName: "s" })),
          wf.deprecateNamespace({ namespace: name }),
          op.deleteNamespace({ namespace: name }),
        ];
        for (const r of await Promise.allSettled(calls)) answers.add(r.status === "fulfilled" ? "ok" : Code[(r.reason as { code: Code }).code]);
        await rejects(wf.describeNamespace({ namespace: name }), Code.NotFound, "not found");
      }
      expect([...answers].filter((a) => a !== "ok" && a !== "NotFound")).toEqual([]);
    });
  });
}
