import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import postgres from "postgres";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const addr = (x: TestCluster) => x.url.replace("http://", "");
const settle = (p: Promise<unknown>) => Promise.race([p.catch(() => {}), new Promise((r) => setTimeout(r, 500))]);

// The races are made to happen by holding a row lock from a connection of the test's own, so
// they run where several connections write at once: on PostgreSQL.
if ((await testStores()).includes("postgres")) {
  describe("cluster connections changing concurrently on postgres", () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    let sql: postgres.Sql;
    beforeAll(async () => {
      [a, b, c] = await Promise.all([
        startTestCluster({ store: "postgres", name: "clusterA", initialFailoverVersion: 1 }),
        startTestCluster({ store: "pglite", name: "clusterB", initialFailoverVersion: 2 }),
        startTestCluster({ store: "pglite", name: "clusterC", initialFailoverVersion: 2 }),
      ]);
      sql = postgres(a.dataLocation, { max: 2, onnotice: () => {} });
    });
    afterAll(async () => {
      await sql.end({ timeout: 1 });
      await Promise.all([a, b, c].map((x) => x.destroy()));
    });

    /** Until some statement of A's database waits for a lock. */
    const someoneWaits = () =>
      eventually(async () => {
        const [row] = await sql`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`;
        expect(row!.n).toBeGreaterThan(0);
      }, { timeout: 5000 });

    test("TestConcurrentUpsertsOfTwoRemotesWithOneInitialVersion: one is connected, the other refused naming the clash", async () => {
      const op = a.client(OperatorService);
      // clusterB's row, uncommitted, holds B's upsert at its insert, after its check.
      const held = sql.reserve();
      const conn = await held;
      await conn`begin`;
      await conn`insert into cluster_metadata (cluster_name, cluster_id, is_current, rpc_address, history_shard_count, failover_version_increment, initial_failover_version, is_global_namespace_enabled) values ('clusterB', 'x', false, 'x', 4, 100, 2, true)`;
      const upB = op.addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      await someoneWaits();
      const upC = op.addOrUpdateRemoteCluster({ frontendAddress: addr(c) });
      await settle(upC);
      await conn`rollback`;
      conn.release();
      const [rb, rc] = await Promise.allSettled([upB, upC]);
      expect(rb.status).toBe("fulfilled");
      expect(rc.status).toBe("rejected");
      await rejects(upC, Code.FailedPrecondition, "its initialFailoverVersion 2 is already used by cluster clusterB");
      const { clusters } = await op.listClusters({});
      expect(clusters.map((x) => x.clusterName)).toEqual(["clusterA", "clusterB"]);
    });

    test("TestRemoveRemoteRacingRegisterThatListsIt: the namespace is registered and the remove refused, never both", async () => {
      const wf = a.client(WorkflowService);
      const op = a.client(OperatorService);
      await wf.registerNamespace({ namespace: "first", isGlobalNamespace: true });
      // The namespace queue's counter, locked, holds the register after its namespace's insert.
      const conn = await sql.reserve();
      await conn`begin`;
      await conn`select * from queue_counters for update`;
      const register = wf.registerNamespace({ namespace: "lists-b", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await someoneWaits();
      const remove = op.removeRemoteCluster({ clusterName: "clusterB" });
      await settle(remove);
      await conn`commit`;
      conn.release();
      const [registered] = await Promise.allSettled([register, remove]);
      expect(registered.status).toBe("fulfilled");
      await rejects(remove, Code.FailedPrecondition, "cluster clusterB is still listed by namespace(s) lists-b");
      const { clusters } = await op.listClusters({});
      expect(clusters.map((x) => x.clusterName)).toEqual(["clusterA", "clusterB"]);
    });
  });
}
