import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { fileURLToPath } from "node:url";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { backfillDone } from "../backfill/support";
import { expectNoDifference } from "../conflict/support";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr, connectAll, eventuallyOn, expectActiveOn, startClusters } from "../failover/mesh";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "order", taskQueue: "q" };
const wf = (x: TestCluster) => x.client(WorkflowService);
const root = fileURLToPath(new URL("../..", import.meta.url));

async function tern(x: TestCluster, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const child = Bun.spawn(["node", "bin/tern", "--address", addr(x), ...args], { cwd: root, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { code, out, err };
}

/**
 * Writers starting runs and signalling them on the namespace's active cluster (whichever
 * answers), until stopped; every acknowledged write is kept.
 */
function writeLoad(namespace: string, clusters: TestCluster[]) {
  const acked: string[] = [];
  const unexpected: string[] = [];
  let stop = false;
  const writer = (async () => {
    for (let n = 0; !stop; n++) {
      const workflowId = `${namespace}-${n % 4}`;
      for (const x of clusters) {
        try {
          if (n < 4) await wf(x).startWorkflowExecution({ namespace, workflowId, ...T, requestId: `${namespace}-start-${n}` });
          else await wf(x).signalWorkflowExecution({ namespace, workflowExecution: { workflowId }, signalName: `s${n}`, requestId: `${namespace}-${n}` });
          acked.push(`${workflowId} s${n}`);
          break;
        } catch (e) {
          const code = (e as ConnectError).code;
          if (code !== Code.FailedPrecondition && code !== Code.Unavailable) unexpected.push(`${x.name}: ${(e as Error).message}`);
        }
      }
    }
  })();
  return {
    acked,
    unexpected,
    /** Waits until more writes than now were acknowledged. */
    more: async (n: number) => {
      const at = acked.length;
      await eventually(() => expect(acked.length).toBeGreaterThan(at + n), { timeout: 20_000 });
    },
    stop: async () => {
      stop = true;
      await writer;
    },
  };
}

for (const store of await testStores()) {
  describe(`namespaces over two and three of three clusters on ${store}`, () => {
    let a: TestCluster, b: TestCluster, c: TestCluster;
    beforeAll(async () => {
      // C's streams ask for A's news every 20 s (the sender's longest wait) when none comes.
      [a, b, c] = await startClusters(store, [{}, {}, { serverOptions: { replication: { waitMs: 60_000 } } }]);
      await connectAll([a, b, c]);
      await wf(a).registerNamespace({ namespace: "pair", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await wf(a).registerNamespace({ namespace: "all", isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"] });
      await Promise.all([expectActiveOn(b, "pair", "clusterA", 1n), expectActiveOn(b, "all", "clusterA", 1n), expectActiveOn(c, "all", "clusterA", 1n)]);
    });
    afterAll(() => Promise.all([a, b, c].map((x) => x?.destroy())));

    test("TestGracefulFailoverToAClusterLeftOutOfABusyNamespaceIsNotHeldUpByThatNamespacesWrites", async () => {
      // A's shards hold tasks of "pair", which C never takes: C must ack past them at once, or a
      // failover of "all" to C waits for its stream's next answer without news (up to 20 s here).
      for (let round = 0; round < 2; round++) {
        for (let i = 0; i < 8; i++) await wf(a).startWorkflowExecution({ namespace: "pair", workflowId: `busy-${round}-${i}`, ...T });
        const res = await a.client(OperatorService).failoverNamespace({ namespace: "all", targetCluster: "clusterC", timeout: durationFromMs(2_000) });
        expect(res.namespace!.replicationConfig!.activeClusterName).toBe("clusterC");
        await expectActiveOn(c, "all", "clusterC", round === 0 ? 3n : 103n);
        await c.client(OperatorService).failoverNamespace({ namespace: "all", targetCluster: "clusterA", timeout: durationFromMs(10_000) });
        await expectActiveOn(a, "all", "clusterA", round === 0 ? 101n : 201n);
      }
    });

    test("TestClusterAddedToANamespaceWhileWritesFlowEndsIdenticalAndCanTakeItOver", async () => {
      await expect(describeOnC("pair")).rejects.toThrow("not found");
      const load = writeLoad("pair", [a, c]);
      await load.more(20);
      await wf(a).updateNamespace({ namespace: "pair", clusters: ["clusterA", "clusterB", "clusterC"] });
      await eventuallyOn(c, "pair", (ns) => expect(ns.replicationConfig!.clusters).toEqual(["clusterA", "clusterB", "clusterC"]));
      await load.more(20);
      // Its backfill of the runs from before it joined first (a graceful failover refuses a target
      // still backfilling: under load it was not DONE yet, 0 of 20 runs, in a CI run).
      await backfillDone(c, "pair", "clusterA");
      // C joined under load can be made active gracefully: it caught up with every shard.
      const res = await a.client(OperatorService).failoverNamespace({ namespace: "pair", targetCluster: "clusterC", timeout: durationFromMs(15_000) });
      expect(res.namespace!.replicationConfig!.activeClusterName).toBe("clusterC");
      await expectActiveOn(c, "pair", "clusterC", 3n);
      const atSwitch = load.acked.length;
      await eventually(() => expect(load.acked.length).toBeGreaterThan(atSwitch), { timeout: 20_000 });
      await load.stop();
      expect(load.unexpected).toEqual([]);
      await eventually(() => expectNoDifference([a, b, c], "pair"), { timeout: 30_000 });
    });

    test("TestClusterRemovedFromANamespaceWhileWritesFlowLearnsItIsOut", async () => {
      const load = writeLoad("all", [a]);
      await load.more(20);
      await wf(a).updateNamespace({ namespace: "all", clusters: ["clusterA", "clusterB"] });
      await eventuallyOn(c, "all", (ns) => expect(ns.replicationConfig!.clusters).toEqual(["clusterA", "clusterB"]));
      await load.more(20);
      await load.stop();
      expect(load.unexpected).toEqual([]);
      await eventually(() => expectNoDifference([a, b], "all"), { timeout: 30_000 });
      // Out of it, C is no target for a failover, graceful or forced.
      await expect(a.client(OperatorService).failoverNamespace({ namespace: "all", targetCluster: "clusterC" })).rejects.toThrow("is not one of namespace all's clusters");
      await expect(wf(c).updateNamespace({ namespace: "all", activeClusterName: "clusterC" })).rejects.toThrow("must be one of the namespace's clusters");
    });

    test("TestCliViewsOfThreeClusters: replication status and namespace describe on each", async () => {
      for (const x of [a, b, c]) {
        const status = await tern(x, "replication", "status");
        expect([x.name, status.code, status.err]).toEqual([x.name, 0, ""]);
        const others = [a, b, c].filter((y) => y !== x).map((y) => y.name);
        for (const name of others) expect(status.out).toContain(name);
        expect(status.out).not.toContain("WARNING");
        const described = await tern(x, "operator", "namespace", "describe", "-n", "pair", "-o", "json");
        expect([x.name, described.code]).toEqual([x.name, 0]);
        const ns = JSON.parse(described.out).namespace;
        expect([x.name, ns.replicationConfig.activeClusterName, ns.failoverVersion, ns.replicationConfig.clusters]).toEqual([x.name, "clusterC", "3", ["clusterA", "clusterB", "clusterC"]]);
      }
      // Each cluster's inbound rows from a peer say what that peer's outbound rows say of it, once idle.
      await eventually(async () => {
        const seen = new Map<string, Record<string, string>>();
        for (const x of [a, b, c]) {
          const { out } = await tern(x, "replication", "status", "-o", "json");
          for (const r of JSON.parse(out).remotes) {
            for (const dir of ["inbound", "outbound"] as const) {
              for (const row of r[dir]) {
                const [from, to] = dir === "inbound" ? [r.clusterName, x.name] : [x.name, r.clusterName];
                const key = `${from}->${to} shard ${row.shardId}`;
                seen.set(key, { ...seen.get(key), [dir]: `${row.maxTaskId ?? 0}/${row.ackedTaskId ?? 0}` });
              }
            }
            expect([x.name, r.clusterName, r.connectionState]).toEqual([x.name, r.clusterName, "connected"]);
          }
        }
        expect(seen.size).toBe(6 * 4);
        for (const [key, { inbound, outbound }] of seen) expect(`${key}: ${inbound}`).toBe(`${key}: ${outbound}`);
      });
    });

    const describeOnC = async (namespace: string) => (await wf(c).describeNamespace({ namespace })).namespace!;
  });
}
