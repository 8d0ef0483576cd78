import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import postgres from "postgres";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { connectAll, describeOn, eventuallyOn, expectActiveOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** Registers name on x, global, listing clusters; its id. */
const register = (x: TestCluster, name: string, clusters: string[]) =>
  x.client(WorkflowService).registerNamespace({ namespace: name, isGlobalNamespace: true, clusters }).then((r) => r.namespace!.namespaceInfo!.id);

/** The namespace ids x holds changes of. */
const heldOn = async (x: TestCluster) => (await x.client(AdminService).getReplicationStatus({})).heldNamespaces.map((h) => h.namespaceId);

/**
 * name on A, known to B, then B taken out of it and name deleted on A: B keeps a copy that lists A
 * only (so it alone does not keep A connected); the old id.
 */
async function staleCopyOnB(a: TestCluster, b: TestCluster, name: string): Promise<string> {
  const oldId = await register(a, name, ["clusterA", "clusterB"]);
  await eventuallyOn(b, name, () => {});
  await a.client(WorkflowService).updateNamespace({ namespace: name, clusters: ["clusterA"] });
  await eventuallyOn(b, name, (ns) => expect(ns.replicationConfig!.clusters).toEqual(["clusterA"]));
  await a.client(OperatorService).deleteNamespace({ namespace: name });
  return oldId;
}

// The races are made by holding B's inbound ack row of A's namespace queue from a connection of
// the test's own: B's apply (or hold) of A's task waits there, at the end of its transaction.
if ((await testStores()).includes("postgres")) {
  describe("removing a remote racing a namespace task from it on postgres (clusterA -> clusterB)", () => {
    let a: TestCluster, b: TestCluster;
    let sql: postgres.Sql;
    beforeAll(async () => {
      [a, b] = await startClusters("postgres", [{}, {}]);
      await connectAll([a, b]);
      sql = postgres(b.dataLocation, { max: 2, onnotice: () => {} });
      // B's inbound ack of A's namespace queue exists, and no namespace lists both.
      await register(a, "warm", ["clusterA", "clusterB"]);
      await eventuallyOn(b, "warm", () => {});
      await a.client(WorkflowService).updateNamespace({ namespace: "warm", clusters: ["clusterA"] });
      await eventuallyOn(b, "warm", (ns) => expect(ns.replicationConfig!.clusters).toEqual(["clusterA"]));
    });
    afterAll(async () => {
      await sql?.end({ timeout: 1 });
      for (const x of [a, b]) await x?.destroy();
    });

    const waiters = async () => (await sql`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`)[0]!.n as number;

    /**
     * Takes lock on a connection of the test's own, runs change (what B then does waits on it), removes A
     * on B meanwhile, and ends the lock (a rollback): the remove's outcome.
     */
    async function removeWhileHeld(lock: (conn: postgres.ReservedSql) => Promise<unknown>, change: () => Promise<unknown>): Promise<{ remove: Promise<unknown> }> {
      const conn = await sql.reserve();
      try {
        await conn`begin`;
        await lock(conn);
        await change();
        await eventually(async () => expect(await waiters()).toBe(1), { timeout: 10_000 });
        const remove = b.client(OperatorService).removeRemoteCluster({ clusterName: "clusterA" });
        let settled = false;
        remove.then(() => (settled = true), () => (settled = true));
        // Either done (it did not wait for B's change) or waiting on a lock that change holds.
        await eventually(async () => expect(settled || (await waiters()) === 2).toBe(true), { timeout: 10_000 });
        await conn`rollback`;
        return { remove };
      } finally {
        conn.release();
      }
    }

    /** B's apply (or hold) of change on A, held at its ack, before its commit, while A is removed on B. */
    const removeWhileApplying = (change: () => Promise<unknown>) =>
      removeWhileHeld((conn) => conn`select 1 from replication_ack_levels where remote_cluster = 'clusterA' and direction = 'inbound' and queue = 'namespace' for update`, change);

    test("TestARemoveRacingAnApplyFromThatRemoteWaitsForItAndIsRefused: never a namespace listing a removed cluster", async () => {
      const { remove } = await removeWhileApplying(() => register(a, "fresh", ["clusterA", "clusterB"]));
      // Before: the remove checked before the create committed, and went through.
      await rejects(remove, Code.FailedPrecondition, "cluster clusterA is still listed by namespace(s) fresh; remove it from their clusters first");
      await eventuallyOn(b, "fresh", (ns) => expect(ns.replicationConfig!.clusters).toEqual(["clusterA", "clusterB"]));
      await a.client(WorkflowService).updateNamespace({ namespace: "fresh", clusters: ["clusterA"] });
      await eventuallyOn(b, "fresh", (ns) => expect(ns.replicationConfig!.clusters).toEqual(["clusterA"]));
    });

    test("TestARemoveRacingAHoldFromThatRemoteWaitsForItAndIsRefused: never held changes of a removed source", async () => {
      const oldId = await staleCopyOnB(a, b, "solo");
      let newId = "";
      const { remove } = await removeWhileApplying(async () => (newId = await register(a, "solo", ["clusterA", "clusterB"])));
      // Before: the remove checked before the hold committed, and went through.
      await rejects(
        remove,
        Code.FailedPrecondition,
        `cluster clusterA is still listed by namespace(s) solo (id ${newId}, its changes from clusterA held here behind a namespace solo with another id, ${oldId})`,
      );
      expect(await heldOn(b)).toEqual([newId]);
      await a.client(WorkflowService).updateNamespace({ namespace: "solo", clusters: ["clusterA"] });
      await eventually(async () => expect(await heldOn(b)).toEqual([]));
    });

    test("TestARemoveRacingTheApplyOfHeldChangesFromThatRemoteWaitsForItAndIsRefused: the stale copy deleted meanwhile", async () => {
      await staleCopyOnB(a, b, "late");
      const newId = await register(a, "late", ["clusterA", "clusterB"]);
      await eventually(async () => expect(await heldOn(b)).toEqual([newId]));
      // A row of the new id, uncommitted, holds B's retry of what it held at its create, after its lock of the held tasks.
      const { remove } = await removeWhileHeld(
        (conn) => conn`insert into namespaces (id, name, state, retention_seconds, is_global, active_cluster_name, clusters, config_version, failover_version) values (${newId}, 'late-shadow', 'REGISTERED', 1, true, 'clusterA', '["clusterA"]', 0, 1)`,
        () => b.client(OperatorService).deleteNamespace({ namespace: "late" }),
      );
      // Before: the remove read no namespace listing A, then no held task (the retry committed between), and went through.
      await rejects(remove, Code.FailedPrecondition, "cluster clusterA is still listed by namespace(s) late; remove it from their clusters first");
      await eventuallyOn(b, "late", (ns) => expect(ns.namespaceInfo!.id).toBe(newId));
      await a.client(WorkflowService).updateNamespace({ namespace: "late", clusters: ["clusterA"] });
      await eventuallyOn(b, "late", (ns) => expect(ns.replicationConfig!.clusters).toEqual(["clusterA"]));
    });
  });
}

/** Held changes from one cluster naming another; a forced failover of the copy they are held behind. */
for (const store of await testStores()) {
  describe(`namespace changes held on ${store}: another cluster listed, and the copy in their way`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    beforeAll(async () => {
      [a, b, c] = await startClusters(store, [{}, {}, {}]);
      await connectAll([a, b, c]);
    });
    afterAll(async () => {
      for (const x of [a, b, c]) await x?.destroy();
    });

    test("TestAClusterListedByHeldChangesFromAnotherIsNotRemoved: until taken out of their namespace", async () => {
      const oldId = await staleCopyOnB(a, b, "trio");
      const newId = await register(a, "trio", ["clusterA", "clusterB", "clusterC"]);
      await eventually(async () => expect(await heldOn(b)).toEqual([newId]));

      // Before: removed (no namespace here lists C, nothing held from C), and applied later the held create listed a removed cluster.
      await rejects(
        b.client(OperatorService).removeRemoteCluster({ clusterName: "clusterC" }),
        Code.FailedPrecondition,
        `cluster clusterC is still listed by namespace(s) trio (id ${newId}, its changes from clusterA, listing clusterC, held here behind a namespace trio with another id, ${oldId}); remove it from their clusters first`,
      );
      // Taken out of trio on its active cluster: held too, the newest held change no longer lists C.
      await a.client(WorkflowService).updateNamespace({ namespace: "trio", clusters: ["clusterA", "clusterB"] });
      await eventually(async () => expect((await b.client(AdminService).getReplicationStatus({})).heldNamespaces.map((h) => h.tasks)).toEqual([2]));
      await b.client(OperatorService).removeRemoteCluster({ clusterName: "clusterC" });
    });

    test("TestAForcedFailoverOfTheCopyHeldChangesWaitBehindIsRefused: the stale copy deleted, the real one fails over", async () => {
      // Deleted on A, its active cluster, while B is a member: B's copy lists both.
      const oldId = await register(a, "twin", ["clusterA", "clusterB"]);
      await eventuallyOn(b, "twin", () => {});
      await a.client(OperatorService).deleteNamespace({ namespace: "twin" });
      const newId = await register(a, "twin", ["clusterA", "clusterB"]);
      await eventually(async () => expect(await heldOn(b)).toContain(newId));

      // Before: B made its stale copy active (version 2), taking writes under twin's name, and A held the copy's changes behind the real twin.
      await rejects(
        b.client(WorkflowService).updateNamespace({ namespace: "twin", activeClusterName: "clusterB" }),
        Code.FailedPrecondition,
        `no forced failover: namespace twin here (id ${oldId}) is not the namespace twin (id ${newId}) that clusterA replicates, whose changes are held here behind this copy ` +
          `(replication status): made active, this copy would take writes under a name that one uses. If this copy is stale (deleted on its active cluster), ` +
          `delete it here ('tern operator namespace delete twin'): the held changes then apply, and twin may be failed over`,
      );
      const copy = await describeOn(b, "twin");
      expect([copy.namespaceInfo!.id, copy.replicationConfig!.activeClusterName]).toEqual([oldId, "clusterA"]);

      // The way out: the stale copy deleted here, the real one applies and is failed over.
      await b.client(OperatorService).deleteNamespace({ namespace: "twin" });
      await eventuallyOn(b, "twin", (ns) => expect(ns.namespaceInfo!.id).toBe(newId));
      await b.client(WorkflowService).updateNamespace({ namespace: "twin", activeClusterName: "clusterB" });
      await expectActiveOn(a, "twin", "clusterB", 2n);
      expect(await heldOn(a)).toEqual([]);
    });
  });
}
