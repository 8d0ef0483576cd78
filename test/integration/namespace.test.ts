import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { rejects } from "../support/rejects";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { eq } from "drizzle-orm";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { NamespaceState } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { namespaces } from "../../src/persistence/schema";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);


for (const store of await testStores()) {
  describe(`namespaces on ${store}`, () => {
    let cluster: TestCluster;
    let wf: ReturnType<typeof cluster.client<typeof WorkflowService>>;
    beforeAll(async () => {
      cluster = await startTestCluster({ store, name: "clusterA" });
      wf = cluster.client(WorkflowService);
    });
    afterAll(() => cluster.destroy());

    test("register local: ULID id, 72h default retention, failover version 0", async () => {
      const { namespace } = await wf.registerNamespace({ namespace: "orders", description: "d", ownerEmail: "o@x.io" });
      expect(namespace!.namespaceInfo!.id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
      expect(namespace!.config!.workflowExecutionRetentionTtl!.seconds).toBe(72n * 3600n);
      expect(namespace!.isGlobalNamespace).toBe(false);
      expect(namespace!.failoverVersion).toBe(0n);
      expect(namespace!.replicationConfig!.activeClusterName).toBe("clusterA");
      await rejects(wf.registerNamespace({ namespace: "orders" }), Code.AlreadyExists, "namespace orders already exists");
    });

    test("register global: failover version is the active cluster's initial version", async () => {
      const { namespace } = await wf.registerNamespace({ namespace: "g1", isGlobalNamespace: true });
      expect(namespace!.isGlobalNamespace).toBe(true);
      expect(namespace!.failoverVersion).toBe(1n);
      expect(namespace!.replicationConfig!.clusters).toEqual(["clusterA"]);
      await rejects(
        wf.registerNamespace({ namespace: "g2", isGlobalNamespace: true, clusters: ["clusterA", "nowhere"] }),
        Code.NotFound,
        "cluster nowhere is not known",
      );
      await rejects(
        wf.registerNamespace({ namespace: "g3", isGlobalNamespace: true, activeClusterName: "clusterB", clusters: ["clusterA"] }),
        Code.InvalidArgument,
        "active cluster clusterB must be one of",
      );
    });

    test("bad names and retention are INVALID_ARGUMENT", async () => {
      await rejects(wf.registerNamespace({ namespace: "" }), Code.InvalidArgument, "namespace is required");
      await rejects(wf.registerNamespace({ namespace: "has space" }), Code.InvalidArgument, "must be 1-255 characters");
      await rejects(wf.registerNamespace({ namespace: "x".repeat(256) }), Code.InvalidArgument, "must be 1-255 characters");
      await rejects(
        wf.registerNamespace({ namespace: "neg", workflowExecutionRetentionPeriod: { seconds: -5n, nanos: 0 } }),
        Code.InvalidArgument,
        "retention must not be negative",
      );
      await rejects(wf.registerNamespace({ namespace: "mail", ownerEmail: "nope" }), Code.InvalidArgument, "not an email");
      await rejects(
        wf.registerNamespace({ namespace: "elsewhere", activeClusterName: "clusterZ" }),
        Code.InvalidArgument,
        "a local namespace lives only in the current cluster; register it global (is_global_namespace; tern: --global) to list other clusters",
      );
      await rejects(wf.describeNamespace({ namespace: "missing" }), Code.NotFound, "namespace missing not found");
    });

    test("description and data past their limits are INVALID_ARGUMENT on register and update, naming the field and the limit", async () => {
      const full = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, "v"]));
      // At the limits: accepted.
      const { k63: _, ...long } = { ...full, k0: "v".repeat(1000), ["k".repeat(255)]: "v" };
      const big = await wf.registerNamespace({ namespace: "big", description: "d".repeat(1000), data: long });
      expect(Object.keys(big.namespace!.namespaceInfo!.data).length).toBe(64);
      await rejects(wf.registerNamespace({ namespace: "big2", description: "d".repeat(1001) }), Code.InvalidArgument, "description is longer than 1000 characters (1001)");
      await rejects(wf.registerNamespace({ namespace: "big2", data: { ...full, k64: "v" } }), Code.InvalidArgument, "data would hold 65 entries; at most 64");
      await rejects(wf.registerNamespace({ namespace: "big2", data: { ["k".repeat(256)]: "v" } }), Code.InvalidArgument, `data key "${"k".repeat(40)}…" (256 characters) is longer than 255 characters`);
      await rejects(wf.registerNamespace({ namespace: "big2", data: { team: "v".repeat(1001) } }), Code.InvalidArgument, 'data value of key "team" is longer than 1000 characters (1001)');
      await rejects(wf.describeNamespace({ namespace: "big2" }), Code.NotFound, "not found");

      await wf.registerNamespace({ namespace: "grow", data: full });
      await rejects(wf.updateNamespace({ namespace: "grow", description: "d".repeat(1001) }), Code.InvalidArgument, "description is longer than 1000 characters");
      await rejects(wf.updateNamespace({ namespace: "grow", data: { k64: "v" } }), Code.InvalidArgument, "data would hold 65 entries; at most 64");
      await rejects(wf.updateNamespace({ namespace: "grow", data: { k1: "v".repeat(1001) } }), Code.InvalidArgument, 'data value of key "k1" is longer than 1000 characters');
      await rejects(wf.updateNamespace({ namespace: "grow", data: { ["k".repeat(256)]: "v" } }), Code.InvalidArgument, "is longer than 255 characters");
      // Replacing one entry with another keeps it at 64.
      const swapped = await wf.updateNamespace({ namespace: "grow", data: { k0: "", k64: "v" } });
      expect(Object.keys(swapped.namespace!.namespaceInfo!.data).length).toBe(64);
      expect(swapped.namespace!.configVersion).toBe(1n);
    });

    test("a namespace already past the limits (written by a source without them) still takes updates that do not grow it", async () => {
      await wf.registerNamespace({ namespace: "legacy" });
      const data = Object.fromEntries(Array.from({ length: 70 }, (_, i) => [`k${i}`, "v".repeat(2000)]));
      await cluster.server.database.db.update(namespaces).set({ description: "d".repeat(5000), data }).where(eq(namespaces.name, "legacy"));
      const up = await wf.updateNamespace({ namespace: "legacy", ownerEmail: "ops@example.com", data: { k0: "", k1: "short" } });
      expect(up.namespace!.namespaceInfo!.description.length).toBe(5000);
      expect(Object.keys(up.namespace!.namespaceInfo!.data).length).toBe(69);
      await rejects(wf.updateNamespace({ namespace: "legacy", data: { k0: "v" } }), Code.InvalidArgument, "data would hold 70 entries; at most 64");
    });

    test("update bumps configVersion and is read back at once (cache invalidated)", async () => {
      await wf.registerNamespace({ namespace: "upd" });
      await wf.describeNamespace({ namespace: "upd" }); // warm the cache
      const { namespace } = await wf.updateNamespace({
        namespace: "upd",
        description: "new",
        ownerEmail: "a@b.c",
        workflowExecutionRetentionPeriod: durationFromMs(3_600_000),
        data: { team: "payments", tier: "1" },
      });
      expect(namespace!.configVersion).toBe(1n);
      const read = (await wf.describeNamespace({ namespace: "upd" })).namespace!;
      expect(read.namespaceInfo!.description).toBe("new");
      expect(read.namespaceInfo!.data).toEqual({ team: "payments", tier: "1" });
      expect(read.config!.workflowExecutionRetentionTtl!.seconds).toBe(3600n);
      const again = await wf.updateNamespace({ namespace: "upd", data: { tier: "" } });
      expect(again.namespace!.namespaceInfo!.data).toEqual({ team: "payments" });
      expect(again.namespace!.configVersion).toBe(2n);
      // Nothing to change: nothing written, as Temporal's UpdateNamespace (no configVersion bump, no replication task).
      const same = await wf.updateNamespace({ namespace: "upd" });
      expect(same.namespace!.configVersion).toBe(2n);
      expect(same.namespace!.namespaceInfo!.data).toEqual({ team: "payments" });
      const byId = await wf.describeNamespace({ id: read.namespaceInfo!.id });
      expect(byId.namespace!.namespaceInfo!.name).toBe("upd");
      await rejects(wf.updateNamespace({ namespace: "upd", activeClusterName: "clusterA" }), Code.InvalidArgument, "is local");
    });

    test("list pages through every namespace in name order", async () => {
      for (let i = 0; i < 7; i++) await wf.registerNamespace({ namespace: `page-${i}` });
      const names: string[] = [];
      let token: Uint8Array = new Uint8Array();
      let pages = 0;
      do {
        const res = await wf.listNamespaces({ pageSize: 3, nextPageToken: token });
        names.push(...res.namespaces.map((n) => n.namespaceInfo!.name));
        token = res.nextPageToken;
        pages++;
      } while (token.length);
      expect(pages).toBeGreaterThan(2);
      expect(names.filter((n) => n.startsWith("page-"))).toEqual([0, 1, 2, 3, 4, 5, 6].map((i) => `page-${i}`));
      expect(names).toEqual([...names].sort());
    });

    test("deprecate blocks new workflows; delete removes the namespace and its runs", async () => {
      await wf.registerNamespace({ namespace: "old" });
      await wf.startWorkflowExecution({ namespace: "old", workflowId: "w", workflowType: "t", taskQueue: "q" });
      const dep = await wf.deprecateNamespace({ namespace: "old" });
      expect(dep.namespace!.namespaceInfo!.state).toBe(NamespaceState.DEPRECATED);
      await rejects(
        wf.startWorkflowExecution({ namespace: "old", workflowId: "w2", workflowType: "t", taskQueue: "q" }),
        Code.FailedPrecondition,
        "deprecated",
      );
      await wf.signalWorkflowExecution({ namespace: "old", workflowExecution: { workflowId: "w" }, signalName: "s" });
      const del = await cluster.client(OperatorService).deleteNamespace({ namespace: "old" });
      expect(del.deletedExecutions).toBe(1n);
      await rejects(wf.describeNamespace({ namespace: "old" }), Code.NotFound, "not found");
      await wf.registerNamespace({ namespace: "old" });
      await rejects(
        wf.describeWorkflowExecution({ namespace: "old", execution: { workflowId: "w" } }),
        Code.NotFound,
        "workflow execution w not found",
      );
    });

    test("cluster describe and list show this cluster", async () => {
      const op = cluster.client(OperatorService);
      const { cluster: info } = await op.describeCluster({});
      expect(info!.clusterName).toBe("clusterA");
      expect(info!.clusterId).toMatch(/^[0-9A-Z]{26}$/);
      expect(info!.historyShardCount).toBe(4);
      expect(info!.failoverVersionIncrement).toBe(100n);
      expect(info!.isCurrentCluster).toBe(true);
      const { clusters } = await op.listClusters({});
      expect(clusters.map((c) => c.clusterName)).toEqual(["clusterA"]);
    });
  });
}
