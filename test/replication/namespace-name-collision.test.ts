import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { eq } from "drizzle-orm";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { namespaces } from "../../src/persistence/schema";
import { replicationStatusTable } from "../../src/cli/commands/replication";
import { addr, connectAll, describeOn, eventuallyOn, startClusters } from "../failover/mesh";
import { tern } from "../backfill/support";
import { eventually } from "../support/eventually";
import { createGate } from "../support/gate";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/**
 * A global namespace deleted on its active cluster and registered again there (a new id), while a
 * passive member keeps its copy of the old one (a delete is local): the new one's create meets a
 * namespace of its name and another id there.
 */
for (const store of await testStores()) {
  describe(`namespace name collision on ${store} (clusterA -> clusterB)`, () => {
    let a: TestCluster, b: TestCluster;
    const started: TestCluster[] = [];
    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, {}]);
      started.push(a, b);
      await connectAll([a, b]);
    });
    afterAll(async () => {
      for (const x of new Set([b, ...started])) await x.destroy();
    });

    const register = (name: string) =>
      a.client(WorkflowService).registerNamespace({ namespace: name, isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] }).then((r) => r.namespace!.namespaceInfo!.id);

    test("TestACreateMeetingAStaleCopyIsHeldAndOtherNamespacesGoOn: shown in status, applied in order once the stale copy is deleted", async () => {
      const oldId = await register("dup");
      await eventuallyOn(b, "dup", (ns) => expect(ns.namespaceInfo!.id).toBe(oldId));
      await a.client(OperatorService).deleteNamespace({ namespace: "dup" });
      const newId = await register("dup");
      await a.client(WorkflowService).updateNamespace({ namespace: "dup", description: "v2" });
      // Before: B's namespace stream retried the create forever, and "other" never came.
      await register("other");
      await eventuallyOn(b, "other", () => {});
      await a.client(WorkflowService).updateNamespace({ namespace: "dup", description: "v3" });
      await register("after");
      await eventuallyOn(b, "after", () => {});

      // The new one's tasks are held, in order, and B keeps its copy of the old one.
      const held = await b.client(AdminService).getReplicationStatus({});
      expect(held.heldNamespaces.map((h) => [h.sourceCluster, h.namespace, h.namespaceId, h.localNamespaceId, h.tasks])).toEqual([["clusterA", "dup", newId, oldId, 3]]);
      const table = replicationStatusTable(held);
      expect(table).toContain(`WARNING: namespace dup (id ${newId}) from clusterA is not applied here: clusterB holds a namespace dup with another id (${oldId})`);
      expect(table).toContain("tern operator namespace delete dup");
      expect((await describeOn(b, "dup")).namespaceInfo!.id).toBe(oldId);
      // Made active there, it would never hear of it: no cluster would take dup's writes.
      await rejects(
        a.client(OperatorService).failoverNamespace({ namespace: "dup", targetCluster: "clusterB" }),
        Code.FailedPrecondition,
        `cluster clusterB holds another namespace dup (id ${oldId}; this one is ${newId}) and holds this one's changes back, so it would never hear of the switch; delete that copy on clusterB first`,
      );

      // Held across a restart of B.
      await b.stop();
      b = await startTestCluster({ store, name: "clusterB", initialFailoverVersion: 2, dataLocation: b.dataLocation });
      expect((await b.client(AdminService).getReplicationStatus({})).heldNamespaces.map((h) => h.tasks)).toEqual([3]);

      // A no longer holds the old id: its stale copy on B, a passive member, may be deleted, and the held tasks apply.
      await b.client(OperatorService).deleteNamespace({ namespace: "dup" });
      const ns = await eventuallyOn(b, "dup", (ns) => expect(ns.namespaceInfo!.id).toBe(newId));
      expect(ns.namespaceInfo!.description).toBe("v3");
      expect(ns.configVersion).toBe((await describeOn(a, "dup")).configVersion);
      await eventually(async () => expect((await b.client(AdminService).getReplicationStatus({})).heldNamespaces).toEqual([]));
      // Later changes of it come as ever.
      await a.client(WorkflowService).updateNamespace({ namespace: "dup", description: "v4" });
      await eventuallyOn(b, "dup", (ns) => expect(ns.namespaceInfo!.description).toBe("v4"));
    });

    test("TestAHoldingMemberTakenOutDropsItsHoldAndAddedBackConverges", async () => {
      const oldId = await register("moot");
      await eventuallyOn(b, "moot", () => {});
      await a.client(OperatorService).deleteNamespace({ namespace: "moot" });
      const newId = await register("moot");
      const heldMoot = async () => (await b.client(AdminService).getReplicationStatus({})).heldNamespaces.filter((h) => h.namespace === "moot").map((h) => [h.namespaceId, h.tasks]);
      await eventually(async () => expect(await heldMoot()).toEqual([[newId, 1]]));

      // Out of moot's clusters, B takes no change of it: what it held is moot. Before: held for good, in status.
      await a.client(WorkflowService).updateNamespace({ namespace: "moot", clusters: ["clusterA"] });
      await eventually(async () => expect(await heldMoot()).toEqual([]));
      expect((await describeOn(b, "moot")).namespaceInfo!.id).toBe(oldId);

      // Added back: held again, as it stands, and applied once the stale copy is gone.
      await a.client(WorkflowService).updateNamespace({ namespace: "moot", clusters: ["clusterA", "clusterB"], description: "back" });
      await eventually(async () => expect(await heldMoot()).toEqual([[newId, 1]]));
      await b.client(OperatorService).deleteNamespace({ namespace: "moot" });
      const ns = await eventuallyOn(b, "moot", (ns) => expect(ns.namespaceInfo!.id).toBe(newId));
      expect(ns.namespaceInfo!.description).toBe("back");
      expect(ns.replicationConfig!.clusters).toEqual(["clusterA", "clusterB"]);
      await eventually(async () => expect(await heldMoot()).toEqual([]));
    });

    test("TestAStaleCopyIsDeletedOnAPassiveMember: its active cluster no longer holds its id", async () => {
      await register("gone");
      await eventuallyOn(b, "gone", () => {});
      await a.client(OperatorService).deleteNamespace({ namespace: "gone" });
      // Before: refused, "delete it on clusterA", where it was deleted already.
      await b.client(OperatorService).deleteNamespace({ namespace: "gone" });
      await expect(describeOn(b, "gone")).rejects.toThrow("not found");
    });

    test("TestAStaleCopyDeletedWhileAMemberIsNotConnectedHereSaysItWasNotAsked", async () => {
      await register("unlinked");
      await eventuallyOn(b, "unlinked", () => {});
      // A member B has no connection to (a mesh without the B-Y link): it may hold the namespace at a later failover version.
      await b.server.database.db.update(namespaces).set({ clusters: ["clusterA", "clusterB", "clusterY"] }).where(eq(namespaces.name, "unlinked"));
      await a.client(OperatorService).deleteNamespace({ namespace: "unlinked" });
      // Before: deleted, clusterY passed over unsaid (only members connected here were asked).
      const res = await tern(b, "operator", "namespace", "delete", "unlinked", "--yes");
      expect([res.code, res.out]).toEqual([0, "Deleted namespace unlinked (0 workflow executions)\n"]);
      expect(res.err).toBe(
        "NOTE: cluster clusterY, listed in namespace unlinked's clusters but not connected to the cluster asked, was not asked whether it holds unlinked " +
          "at a later failover version; if one does, this copy was behind, not stale ('tern operator namespace describe unlinked' there says where it is active)\n",
      );
      await expect(describeOn(b, "unlinked")).rejects.toThrow("not found");
    });

    test("TestAPassiveCopyItsActiveClusterStillHoldsIsNotDeleted", async () => {
      const id = await register("kept");
      await eventuallyOn(b, "kept", () => {});
      await rejects(
        b.client(OperatorService).deleteNamespace({ namespace: "kept" }),
        Code.FailedPrecondition,
        `namespace kept is global and active in cluster clusterA, which still holds it (id ${id}), and clusterB is one of its clusters: delete it on clusterA, or take clusterB out of its clusters there first`,
      );
      expect((await describeOn(b, "kept")).namespaceInfo!.id).toBe(id);
    });

    test("TestAPassiveCopyWhoseActiveClusterCannotBeAskedIsNotDeleted", async () => {
      await register("asked");
      await eventuallyOn(b, "asked", () => {});
      // A copy naming an active cluster B is not connected to: B cannot tell whether it is stale.
      await b.server.database.db.update(namespaces).set({ activeClusterName: "clusterZ", clusters: ["clusterZ", "clusterB"] }).where(eq(namespaces.name, "asked"));
      await rejects(
        b.client(OperatorService).deleteNamespace({ namespace: "asked" }),
        Code.FailedPrecondition,
        "delete it on clusterZ, or take clusterB out of its clusters there first (a copy clusterZ no longer holds may be deleted here, but clusterZ could not be asked: cluster clusterZ is not connected here)",
      );
      await describeOn(b, "asked");
    });
  });
}

/** How the holding cluster retries what it holds, and the removal of the source of held changes. */
for (const store of await testStores()) {
  describe(`namespace name collision on ${store}: retries and the source removed`, () => {
    let a: TestCluster, b: TestCluster;
    beforeAll(async () => {
      // B's periodic retry of held changes never comes within the test: what applies them is what it waits for.
      [a, b] = await startClusters(store, [{}, { serverOptions: { replication: { heldRetryMs: 600_000 } } }]);
      await connectAll([a, b]);
    });
    afterAll(async () => {
      for (const x of [a, b]) await x?.destroy();
    });

    test("TestHeldChangesAreNotRetriedAtEveryPollButAtOnceAfterADeleteHere", async () => {
      const wf = a.client(WorkflowService);
      const register = (name: string) => wf.registerNamespace({ namespace: name, isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] }).then((r) => r.namespace!.namespaceInfo!.id);
      await register("quiet");
      await eventuallyOn(b, "quiet", () => {});
      await a.client(OperatorService).deleteNamespace({ namespace: "quiet" });
      const newId = await register("quiet");
      const heldIds = async () => (await b.client(AdminService).getReplicationStatus({})).heldNamespaces.map((h) => h.namespaceId);
      await eventually(async () => expect(await heldIds()).toEqual([newId]));
      // The copy in the way gone behind the server's back (no namespace delete here): nothing changed that B was told of.
      await b.server.database.db.delete(namespaces).where(eq(namespaces.name, "quiet"));
      // Two polls of A's namespace queue answered and applied, each followed by what comes after it (B's loop is sequential).
      for (const poke of ["poke1", "poke2"]) {
        await register(poke);
        await eventuallyOn(b, poke, () => {});
      }
      // Before: each poll tried every held namespace again (a transaction each), so the first poll applied it.
      expect(await heldIds()).toEqual([newId]);
      // A namespace delete here is what frees a name: held changes are tried at once after it.
      await b.client(WorkflowService).registerNamespace({ namespace: "scratch" });
      await b.client(OperatorService).deleteNamespace({ namespace: "scratch" });
      await eventuallyOn(b, "quiet", (ns) => expect(ns.namespaceInfo!.id).toBe(newId));
      await eventually(async () => expect(await heldIds()).toEqual([]));
      for (const name of ["quiet", "poke1", "poke2"]) await wf.updateNamespace({ namespace: name, clusters: ["clusterA"] });
    });

    test("TestTheSourceOfHeldChangesIsNotRemovedWhileTheyAreHeld", async () => {
      const wf = a.client(WorkflowService);
      const oldId = (await wf.registerNamespace({ namespace: "solo", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] })).namespace!.namespaceInfo!.id;
      // B taken out of it: its copy, kept, no longer lists it, so that copy alone does not keep A connected.
      await wf.updateNamespace({ namespace: "solo", clusters: ["clusterA"] });
      await eventuallyOn(b, "solo", (ns) => expect(ns.replicationConfig!.clusters).toEqual(["clusterA"]));
      await a.client(OperatorService).deleteNamespace({ namespace: "solo" });
      const newId = (await wf.registerNamespace({ namespace: "solo", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] })).namespace!.namespaceInfo!.id;
      await eventually(async () => expect((await b.client(AdminService).getReplicationStatus({})).heldNamespaces.map((h) => h.namespaceId)).toEqual([newId]));

      // Before: removed, and what was held from A stayed for good (applied later, a namespace listing a removed cluster).
      await rejects(
        b.client(OperatorService).removeRemoteCluster({ clusterName: "clusterA" }),
        Code.FailedPrecondition,
        `cluster clusterA is still listed by namespace(s) solo (id ${newId}, its changes from clusterA held here behind a namespace solo with another id, ${oldId}); remove it from their clusters first`,
      );
      // The way the runbook says: out of its clusters on its active cluster, B drops what it held, and A may go.
      await wf.updateNamespace({ namespace: "solo", clusters: ["clusterA"] });
      await eventually(async () => expect((await b.client(AdminService).getReplicationStatus({})).heldNamespaces).toEqual([]));
      await b.client(OperatorService).removeRemoteCluster({ clusterName: "clusterA" });
    });
  });
}

/** A passive copy behind its namespace's failover: the cluster it names active no longer holds the id, another member does. */
for (const store of await testStores()) {
  describe(`namespace name collision on ${store}: a copy behind, not stale`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    const gate = createGate();
    beforeAll(async () => {
      // Closed, B applies no namespace change: it has not heard of the failover yet. A stream stopped meanwhile (its
      // remote's connection disabled) goes on to its stop, which takes nothing.
      const beforeNamespaceApply = (_ns: unknown, signal: AbortSignal) =>
        gate.held && !signal.aborted ? Promise.race([gate.held, new Promise<void>((r) => signal.addEventListener("abort", () => r(), { once: true }))]) : Promise.resolve();
      [a, b, c] = await startClusters(store, [{}, { serverOptions: { replication: { beforeNamespaceApply } } }, {}]);
      await connectAll([a, b, c]);
    });
    afterAll(async () => {
      gate.open();
      for (const x of [a, b, c]) await x?.destroy();
    });

    /** name on A, B and C, forced over to C while B hears nothing (the gate left closed), A taken out there and its copy deleted on A; its id. */
    async function behindOnB(name: string): Promise<string> {
      const id = (await a.client(WorkflowService).registerNamespace({ namespace: name, isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"] })).namespace!.namespaceInfo!.id;
      for (const x of [b, c]) await eventuallyOn(x, name, () => {});
      gate.close();
      await c.client(WorkflowService).updateNamespace({ namespace: name, activeClusterName: "clusterC" });
      await c.client(WorkflowService).updateNamespace({ namespace: name, clusters: ["clusterB", "clusterC"] });
      await eventuallyOn(a, name, (ns) => expect(ns.replicationConfig!.clusters).toEqual(["clusterB", "clusterC"]));
      await a.client(OperatorService).deleteNamespace({ namespace: name });
      return id;
    }

    test("TestACopyWhoseNamedActiveClusterLeftButAnotherMemberHoldsItIsNotDeleted", async () => {
      // Forced over to C, A taken out there and its copy deleted on A: B, behind, still names A active.
      const id = await behindOnB("moved");
      expect((await describeOn(b, "moved")).replicationConfig!.activeClusterName).toBe("clusterA");

      // Before: A answered NOT_FOUND, and B deleted its copy of a namespace it is a member of, active in C.
      await rejects(
        b.client(OperatorService).deleteNamespace({ namespace: "moved" }),
        Code.FailedPrecondition,
        `cluster clusterC holds it (id ${id}) at a later failover version (3, active in clusterC) than this copy's (1): this copy is behind, not stale`,
      );
      // Its connection disabled here, C is still asked (only one that does not answer is passed over).
      const connect = (enableRemoteClusterConnection: boolean) => b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(c), enableRemoteClusterConnection });
      await connect(false);
      await rejects(b.client(OperatorService).deleteNamespace({ namespace: "moved" }), Code.FailedPrecondition, "this copy is behind, not stale");
      await connect(true);
      gate.open();
      await eventuallyOn(b, "moved", (ns) => expect(ns.replicationConfig!.activeClusterName).toBe("clusterC"));
    });

    test("TestAForcedFailoverBeforeTheNewNamespaceWasHeardHoldsItBehindALiveCopy: the warnings say how to keep either", async () => {
      const register = () => a.client(WorkflowService).registerNamespace({ namespace: "pair", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] }).then((r) => r.namespace!.namespaceInfo!.id);
      const oldId = await register();
      await eventuallyOn(b, "pair", () => {});
      gate.close();
      await a.client(OperatorService).deleteNamespace({ namespace: "pair" });
      const newId = await register();
      // B, not having heard of the new one, makes its copy active: nothing is held behind it yet, so it may.
      await b.client(WorkflowService).updateNamespace({ namespace: "pair", activeClusterName: "clusterB" });
      gate.open();
      const held = async (x: TestCluster) => (await x.client(AdminService).getReplicationStatus({})).heldNamespaces.filter((h) => h.namespace === "pair").map((h) => [h.sourceCluster, h.namespaceId, h.localNamespaceId]);
      // Each is held behind the other where it is not active.
      await eventually(async () => expect(await held(b)).toEqual([["clusterA", newId, oldId]]));
      await eventually(async () => expect(await held(a)).toEqual([["clusterB", oldId, newId]]));
      // Before: only "if it is a stale copy, delete it here", of a copy live here (on A: of the one registered again).
      expect(replicationStatusTable(await b.client(AdminService).getReplicationStatus({}))).toContain(
        `If ${oldId} is live here instead (active here, failed over before clusterB heard of ${newId}), these are two namespaces of one name: ` +
          `to keep ${oldId}, take clusterB out of ${newId}'s clusters on clusterA (the held tasks are then dropped), then delete ${newId} there; ` +
          `to keep ${newId}, take clusterA out of ${oldId}'s clusters here, then delete ${oldId} here ('tern operator namespace delete pair': what it took is lost), and the held tasks apply`,
      );
      expect(replicationStatusTable(await a.client(AdminService).getReplicationStatus({}))).toContain(
        `If ${newId} is live here instead (active here, failed over before clusterA heard of ${oldId}), these are two namespaces of one name: ` +
          `to keep ${newId}, take clusterA out of ${oldId}'s clusters on clusterB`,
      );

      // Keeping the new one, the way B's warning says.
      await b.client(WorkflowService).updateNamespace({ namespace: "pair", clusters: ["clusterB"] });
      await eventually(async () => expect(await held(a)).toEqual([]));
      await b.client(OperatorService).deleteNamespace({ namespace: "pair" });
      await eventuallyOn(b, "pair", (ns) => expect([ns.namespaceInfo!.id, ns.replicationConfig!.activeClusterName]).toEqual([newId, "clusterA"]));
      await eventually(async () => expect(await held(b)).toEqual([]));
    });

    // Last in this describe: C is stopped.
    test("TestACopyWhoseNamedActiveClusterLeftIsNotDeletedWhileTheMemberHoldingItCannotBeAsked: until its connection is disabled", async () => {
      // Only C holds lost, and B, behind, still names A active.
      const id = await behindOnB("lost");
      await c.stop();

      // Before: C, not answering, was passed over, and B deleted its copy of a namespace live on C.
      const refused = await rejects(
        b.client(OperatorService).deleteNamespace({ namespace: "lost" }),
        Code.FailedPrecondition,
        `namespace lost is global, clusterB is one of its clusters, and clusterA, named active here, no longer holds it, but cluster clusterC at ${addr(c)} (`,
      );
      expect(refused.rawMessage).toContain(
        `) could not be asked whether it holds it at a later failover version (this copy then behind, not stale: deleted, it would be lost); delete it again once it answers, ` +
          `or, if it is gone for good, disable the connection to it here ('tern operator cluster upsert --frontend-address ${addr(c)} --enable-connection=false')`,
      );
      const copy = await describeOn(b, "lost");
      expect([copy.namespaceInfo!.id, copy.replicationConfig!.activeClusterName]).toEqual([id, "clusterA"]);

      // The way out for a member gone for good: its connection disabled here, it is not waited for.
      await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(c), enableRemoteClusterConnection: false });
      await b.client(OperatorService).deleteNamespace({ namespace: "lost" });
      await expect(describeOn(b, "lost")).rejects.toThrow("not found");
    });
  });
}
