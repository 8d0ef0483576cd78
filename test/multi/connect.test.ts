import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

for (const store of await testStores()) {
  describe(`connecting clusters on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    const addr = (x: TestCluster) => x.url.replace("http://", "");
    beforeAll(async () => {
      [a, b, c] = await Promise.all([
        startTestCluster({ store, name: "clusterA", initialFailoverVersion: 1 }),
        startTestCluster({ store, name: "clusterB", initialFailoverVersion: 2, shards: 8 }),
        startTestCluster({ store, name: "clusterC", initialFailoverVersion: 3, shards: 2 }),
      ]);
    });
    afterAll(() => Promise.all([a, b, c].map((x) => x.destroy())));

    test("connect both ways (either side first) and describe with the remote's own facts", async () => {
      const up = await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
      expect(up.cluster).toMatchObject({ clusterName: "clusterA", initialFailoverVersion: 1n, historyShardCount: 4, enableConnection: true });
      expect(up.cluster!.clusterId).toBe(a.server.cluster.clusterId);
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
      const list = await a.client(OperatorService).listClusters({});
      expect(list.clusters.map((x) => [x.clusterName, x.isCurrentCluster, x.historyShardCount])).toEqual([
        ["clusterA", true, 4],
        ["clusterB", false, 8],
      ]);
      expect(list.clusters[1]!.rpcAddress).toBe(addr(b));
      const d = await a.client(OperatorService).describeCluster({ clusterName: "clusterB" });
      expect(d.cluster!.initialFailoverVersion).toBe(2n);
    });

    test("disable and enable a connection; the change shows at once", async () => {
      const op = a.client(OperatorService);
      const off = await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: false });
      expect(off.cluster!.enableConnection).toBe(false);
      expect((await op.describeCluster({ clusterName: "clusterB" })).cluster!.connectionState).toBe("disabled");
      const on = await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: true });
      expect(on.cluster!.enableConnection).toBe(true);
    });

    test("a connection disabled on one side only: the other's state says why as the CLI prints an error, not connect's [code] text", async () => {
      await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: false });
      try {
        await eventually(async () => {
          const onB = (await b.client(OperatorService).describeCluster({ clusterName: "clusterA" })).cluster!;
          expect(onB.connectionState).toBe("error: clusterA answered: failed_precondition: replication with cluster clusterB is disabled on clusterA");
        });
      } finally {
        await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: true });
      }
    });

    test("upsert refuses a remote that breaks a rule, naming it", async () => {
      const op = a.client(OperatorService);
      await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: addr(a) }), Code.FailedPrecondition, "it has this cluster's name (clusterA)");
      const refused = await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: "127.0.0.1:1" }), Code.Unavailable, "cannot reach a tern cluster at http://127.0.0.1:1");
      // In plain words, not Bun's fetch advice ("Is the computer able to access the url?").
      expect(refused.rawMessage).toBe("cannot reach a tern cluster at http://127.0.0.1:1: connection refused");
      // A proxy answering its own 500 page was reached: before, "cannot reach a tern cluster at ...: HTTP 500 ...".
      const proxy = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("<html><h1>500 Internal Server Error</h1></html>", { status: 500, headers: { "content-type": "text/html" } }) });
      try {
        const answered = await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: proxy.url.host }), Code.Unavailable, `http://${proxy.url.host}`);
        expect(answered.rawMessage).toBe(`http://${proxy.url.host} answered, but not as a tern frontend: HTTP 500 "<html><h1>500 Internal Server Error</h1></html>"`);
      } finally {
        proxy.stop(true);
      }
      await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: "" }), Code.InvalidArgument, "frontend address is required");
      // A malformed address is the caller's mistake, not a cluster out of reach (retryable).
      for (const bad of ["127.0.0.1:99999", "[::1", "a b:1", "http://"]) {
        await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: bad }), Code.InvalidArgument, `frontend address ${JSON.stringify(bad)} is not host:port or an http(s) URL`);
      }
      await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: "ftp://127.0.0.1:7233" }), Code.InvalidArgument, "scheme ftp is not supported");
      // Before: the URL parser dropped the tab (127.0.0.1:17, then UNAVAILABLE, retried for good) and fetch refused the others.
      for (const [bad, code] of [["127.0.0.1:1\t7", "0009"], ["http://peer\nb:7233", "000A"], ["127.0.0.1\u007f:7233", "007F"]]) {
        await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: bad }), Code.InvalidArgument, `frontend address ${JSON.stringify(bad)} has a control character (U+${code}) in it`);
      }
      // Credentials: Bun's fetch sent them, Node's refuses them; taken, the password showed in
      // cluster list, in the answer and in the 'rpc failed' log line. Neither the answer nor the list shows it now.
      for (const withPassword of [`http://tern:s3cret@${addr(b)}`, `tern:s3cret@${addr(b)}`, "http://tern:s3/cret@127.0.0.1:1"]) {
        const refused = await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: withPassword }), Code.InvalidArgument, "frontend address");
        expect([refused.rawMessage.includes("s3"), refused.rawMessage.includes("cret"), refused.rawMessage.includes("tern:***@")]).toEqual([false, false, true]);
      }
      expect((await op.listClusters({})).clusters.map((c) => c.rpcAddress).filter((r) => r.includes("@"))).toEqual([]);
      const clash = await startTestCluster({ store: "pglite", name: "clusterD", initialFailoverVersion: 2 });
      const odd = await startTestCluster({ store: "pglite", name: "clusterG", initialFailoverVersion: 7, shards: 3 });
      const inc = await startTestCluster({ store: "pglite", name: "clusterE", initialFailoverVersion: 5, failoverVersionIncrement: 10 });
      const local = await startTestCluster({ store: "pglite", name: "clusterF", initialFailoverVersion: 6, enableGlobalNamespace: false });
      try {
        await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: addr(clash) }), Code.FailedPrecondition, "initialFailoverVersion 2 is already used by cluster clusterB");
        await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: addr(inc) }), Code.FailedPrecondition, "failoverVersionIncrement (10) differs from this cluster's (100)");
        await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: addr(local) }), Code.FailedPrecondition, "global namespaces are disabled on clusterF");
        await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: addr(odd) }), Code.FailedPrecondition, "shard counts 3 and 4 are not multiples");
        expect((await c.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) })).cluster!.historyShardCount).toBe(8);
      } finally {
        await Promise.all([clash.destroy(), odd.destroy(), inc.destroy(), local.destroy()]);
      }
    });

    test("remove is refused while a namespace lists both clusters", async () => {
      const op = a.client(OperatorService);
      await a.client(WorkflowService).registerNamespace({ namespace: "both", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await rejects(
        op.removeRemoteCluster({ clusterName: "clusterB" }),
        Code.FailedPrecondition,
        "still listed by namespace(s) both; remove it from their clusters first, on each namespace's active cluster " +
          "('tern operator namespace update -n both --cluster clusterA' on clusterA)",
      );
      // More than the refusal names: a few, then how many more and where to see them.
      const others = ["both-2", "both-3", "both-4", "both-5"];
      for (const namespace of others) {
        await a.client(WorkflowService).registerNamespace({ namespace, isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      }
      await rejects(
        op.removeRemoteCluster({ clusterName: "clusterB" }),
        Code.FailedPrecondition,
        "still listed by namespace(s) both, both-2, both-3 and 2 more; remove it from their clusters first, on each namespace's active cluster " +
          "('tern operator namespace update -n both --cluster clusterA' on clusterA; 'tern operator namespace update -n both-2 --cluster clusterA' on clusterA; " +
          "'tern operator namespace update -n both-3 --cluster clusterA' on clusterA; 'tern operator namespace list' shows the rest)",
      );
      for (const namespace of ["both", ...others]) await a.client(WorkflowService).updateNamespace({ namespace, clusters: ["clusterA"] });
      await op.removeRemoteCluster({ clusterName: "clusterB" });
      expect((await op.listClusters({})).clusters.map((x) => x.clusterName)).toEqual(["clusterA"]);
      await rejects(op.removeRemoteCluster({ clusterName: "clusterB" }), Code.NotFound, "cluster clusterB is not known");
    });

    test("a known remote that is down can be disabled; enabling it, or disabling one not known, needs its answer (last: it stops B)", async () => {
      const op = c.client(OperatorService); // C connected to B in the test before last
      await b.stop();
      // Another spelling of its address is no remote known here: the answer says how C knows B.
      const other = addr(b).replace("127.0.0.1", "localhost");
      const e = await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: other, enableRemoteClusterConnection: false }), Code.Unavailable, `cannot reach a tern cluster at http://${other}`);
      expect(e.rawMessage).toContain(`no remote cluster of clusterC is known at ${other}, and one that is down is disabled by the address it is known at (clusterB at ${addr(b)})`);
      expect((await op.describeCluster({ clusterName: "clusterB" })).cluster!.enableConnection).toBe(true);
      const off = await op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: false });
      expect(off.cluster).toMatchObject({ clusterName: "clusterB", enableConnection: false });
      expect((await op.describeCluster({ clusterName: "clusterB" })).cluster!.enableConnection).toBe(false);
      await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: addr(b), enableRemoteClusterConnection: true }), Code.Unavailable, "cannot reach a tern cluster");
      await rejects(op.addOrUpdateRemoteCluster({ frontendAddress: "127.0.0.1:1", enableRemoteClusterConnection: false }), Code.Unavailable, "cannot reach a tern cluster at http://127.0.0.1:1");
    });
  });
}
