import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { replicationStatusTable } from "../../src/cli/commands/replication";
import { connectAll, describeOn, eventuallyOn, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(90_000);

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

    test("TestAStaleCopyIsDeletedOnAPassiveMember: its active cluster no longer holds its id", async () => {
      await register("gone");
      await eventuallyOn(b, "gone", () => {});
      await a.client(OperatorService).deleteNamespace({ namespace: "gone" });
      // Before: refused, "delete it on clusterA", where it was deleted already.
      await b.client(OperatorService).deleteNamespace({ namespace: "gone" });
      expect(describeOn(b, "gone")).rejects.toThrow("not found");
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
  });
}
