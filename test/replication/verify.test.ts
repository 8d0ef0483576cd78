import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { and, eq, sql } from "drizzle-orm";
import { createReplicationVerifier } from "../../replication/verification";
import { createRemoteClientPool } from "../../src/cluster/remote-client";
import { AdminService, VerifyReplicationRequestSchema } from "../../src/gen/tern/admin/v1/service_pb";
import type { Db } from "../../src/persistence/database";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { executions, historyEvents } from "../../src/persistence/schema";
import { connectAll, startClusters } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { json } from "../support/payload";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { addr, expectSameHistories, globalNamespace } from "./support";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const root = fileURLToPath(new URL("../..", import.meta.url));
const NS = "ledger";
const COUNT = 1_050;

async function tern(x: TestCluster, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const child = Bun.spawn(["node", "bin/tern", "--address", addr(x), ...args], { cwd: root, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { code, out, err };
}

for (const store of await testStores()) {
  describe(`replication verify on ${store} (${COUNT} executions)`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;

    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, {}]);
      await connectAll([a, b]);
      nsId = await globalNamespace(a, b, NS);
      const wf = a.client(WorkflowService);
      const ids = Array.from({ length: COUNT }, (_, i) => `entry-${String(i).padStart(4, "0")}`);
      // A few at a time: PostgreSQL's connection limit is shared with every suite running on the machine.
      for (let i = 0; i < ids.length; i += 8) {
        await Promise.all(ids.slice(i, i + 8).map((workflowId) => wf.startWorkflowExecution({ namespace: NS, workflowId, workflowType: "Post", taskQueue: "q", input: json(workflowId) })));
      }
      // Closed runs count too, and a second run of one workflow id.
      await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "entry-0001", runId: "" }, signalName: "amend", input: json(1) });
      await wf.completeWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "entry-0002", runId: "" }, result: json("ok") });
      await wf.startWorkflowExecution({ namespace: NS, workflowId: "entry-0002", workflowType: "Post", taskQueue: "q" });
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 60_000 });
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("IdenticalClustersVerify: every execution compared, paged, no difference, exit 0", async () => {
      const res = await a.client(AdminService).verifyReplication({ namespace: NS, cluster: "clusterB" });
      expect([res.localExecutions, res.remoteExecutions]).toEqual([BigInt(COUNT + 1), BigInt(COUNT + 1)]);
      expect([res.missing, res.extra, res.diverging]).toEqual([[], [], []]);
      // Small pages walk the same executions as one big one.
      let token: Uint8Array = new Uint8Array(0);
      let pages = 0;
      const seen: string[] = [];
      do {
        const page = await b.client(AdminService).getExecutionChecksums({ namespace: NS, pageSize: 400, nextPageToken: token });
        seen.push(...page.executions.map((x) => `${x.workflowId}/${x.runId}`));
        token = page.nextPageToken;
        pages++;
      } while (token.length);
      expect([pages, new Set(seen).size]).toEqual([3, COUNT + 1]);
      const cli = await tern(a, "replication", "verify", "--namespace", NS, "--cluster", "clusterB");
      expect([cli.code, cli.out]).toEqual([0, `clusterA: ${COUNT + 1} executions, clusterB: ${COUNT + 1} executions; histories are identical\n`]);
    });

    test("AnAbandonedVerifyStopsReadingHere: once it has answered, it reads no more of this cluster's checksums", async () => {
      const db = a.server.database.db;
      let queries = 0;
      const caller = new AbortController();
      // The caller gives up after a few of this cluster's statements: the remote's answer is
      // abandoned at once, and this cluster's walk (every run digested a page of events at a time) ends too.
      const counted = new Proxy(db, {
        get: (target, key, receiver) =>
          key === "execute" ? (...args: Parameters<Db["execute"]>) => (++queries === 5 && caller.abort(), target.execute(...args)) : Reflect.get(target, key, receiver),
      });
      const verifier = createReplicationVerifier({ db: counted, cluster: a.server.cluster, clients: createRemoteClientPool(), sqlDigestBytes: 0, pageWorkMs: 0 });
      const answered = await verifier.verify(create(VerifyReplicationRequestSchema, { namespace: NS, cluster: "clusterB" }), caller.signal).then(() => -1, () => queries);
      expect(answered).toBeGreaterThanOrEqual(5);
      // Five statements of ours on the same database after the answer: a walk left going would have run some of its own.
      for (let i = 0; i < 5; i++) await db.execute(sql`select 1`);
      expect(queries).toBe(answered);
    });

    test("ANamespaceTheRemoteDoesNotHaveIsSaidToBeMissingThere, not here", async () => {
      await a.client(WorkflowService).registerNamespace({ namespace: "only-a", isGlobalNamespace: true, clusters: ["clusterA"] });
      const cli = await tern(a, "replication", "verify", "-n", "only-a", "--cluster", "clusterB");
      expect([cli.code, cli.err.trim()]).toEqual([1, "error: not_found: namespace only-a is not on cluster clusterB (is it one of the namespace's clusters?): namespace only-a not found"]);
    });

    test("AMisspeltRemoteIsRefusedNamingTheRemotes", async () => {
      const cli = await tern(a, "replication", "verify", "-n", NS, "--cluster", "clusterb");
      expect([cli.code, cli.err.trim()]).toEqual([1, "error: not_found: cluster clusterb is not a remote cluster of clusterA (its remote clusters: clusterB)"]);
    });

    test("DivergedClusterFails: a changed event, a lost last event, a lost execution and a stray one are reported, exit 1", async () => {
      const db = b.server.database.db;
      const run = (workflowId: string) => and(eq(historyEvents.namespaceId, nsId), eq(historyEvents.workflowId, workflowId));
      // entry-0001's event 2 differs; B lacks entry-0003's last event (its history the start of A's: behind, as when it lags).
      await db.update(historyEvents).set({ version: 99 }).where(and(run("entry-0001"), eq(historyEvents.eventId, 2)));
      await a.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "entry-0003", runId: "" }, signalName: "late" });
      await eventually(async () => expect((await b.client(WorkflowService).describeWorkflowExecution({ namespace: NS, execution: { workflowId: "entry-0003" } })).nextEventId).toBe(3n));
      await db.delete(historyEvents).where(and(run("entry-0003"), eq(historyEvents.eventId, 2)));
      await db.delete(executions).where(and(eq(executions.namespaceId, nsId), eq(executions.workflowId, "entry-0100")));
      const [stray] = await db.select().from(executions).where(and(eq(executions.namespaceId, nsId), eq(executions.workflowId, "entry-0200")));
      await db.insert(executions).values({ ...stray!, workflowId: "stray", status: "COMPLETED" });

      const cli = await tern(a, "replication", "verify", "-n", NS, "--cluster", "clusterB", "-o", "json");
      expect(cli.code).toBe(1);
      const report = JSON.parse(cli.out);
      expect(report.missing.map((d: { workflowId: string }) => d.workflowId)).toEqual(["entry-0100"]);
      expect(report.extra.map((d: { workflowId: string }) => d.workflowId)).toEqual(["stray"]);
      const counts = (d: { workflowId: string; local: { eventCount: string }; remote: { eventCount: string } }) => [d.workflowId, d.local.eventCount, d.remote.eventCount];
      expect(report.diverging.map(counts)).toEqual([["entry-0001", "2", "2"]]);
      expect(report.behind.map(counts)).toEqual([["entry-0003", "2", "1"]]);
      const table = await tern(a, "replication", "verify", "-n", NS, "--cluster", "clusterB");
      expect(table.code).toBe(1);
      expect(table.out).toContain("1 missing, 1 extra, 1 diverging, 1 behind (one history the start of the other's)");
      expect(table.out).toMatch(/^diverging +entry-0001 +\S+ +2 events \w+ +2 events \w+$/m);
      expect(table.out).toMatch(/^behind +entry-0003 +\S+ +2 events \w+ +1 event \w+$/m);
      // Asked of B, the longer side is the remote's: B's prefix is asked of A.
      const fromB = await b.client(AdminService).verifyReplication({ namespace: NS, cluster: "clusterA" });
      expect(fromB.behind.map((d) => [d.workflowId, d.local!.eventCount, d.remote!.eventCount])).toEqual([["entry-0003", 1n, 2n]]);
      expect(fromB.diverging.map((d) => d.workflowId)).toEqual(["entry-0001"]);
      // Asked a page at a time (pages of 300 runs a side: B's walk runs ahead of A's, missing one), the same differences.
      const whole = await a.client(AdminService).verifyReplication({ namespace: NS, cluster: "clusterB" });
      const pages = { local: 0n, remote: 0n, calls: 0, found: [] as string[] };
      let token: Uint8Array = new Uint8Array(0);
      do {
        const page = await a.client(AdminService).verifyReplication({ namespace: NS, cluster: "clusterB", pageSize: 300, nextPageToken: token });
        pages.local += page.localExecutions;
        pages.remote += page.remoteExecutions;
        pages.found.push(...(["missing", "extra", "diverging", "behind"] as const).flatMap((k) => page[k].map((d) => `${k} ${d.workflowId}`)));
        token = page.nextPageToken;
        pages.calls++;
      } while (token.length);
      const found = (["missing", "extra", "diverging", "behind"] as const).flatMap((k) => whole[k].map((d) => `${k} ${d.workflowId}`));
      expect([pages.local, pages.remote, pages.found.sort()]).toEqual([whole.localExecutions, whole.remoteExecutions, found.sort()]);
      expect(pages.calls).toBeGreaterThanOrEqual(4);
    });
  });
}
