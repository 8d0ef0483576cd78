import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EventType } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { runTern, startClusterProcess, type ClusterProcess } from "../../scripts/lib/cluster-process";
import { eventually } from "../support/eventually";
import { createTestDatabase } from "../support/postgres";
import { testStores } from "../support/stores";

setDefaultTimeout(180_000);

const client = (p: ClusterProcess) => createClient(WorkflowService, createConnectTransport({ baseUrl: `http://${p.address}` }));

/** Events of a run as comparable strings (id, version, type, signal name). */
async function history(p: ClusterProcess, workflowId: string): Promise<string[]> {
  const res = await client(p).getWorkflowExecutionHistory({ namespace: "orders", execution: { workflowId }, maximumPageSize: 1000 });
  return res.history!.events.map((e) => {
    const name = e.attributes.case === "workflowExecutionSignaledEventAttributes" ? e.attributes.value.signalName : "";
    return `${e.eventId}@${e.version}:${EventType[e.eventType]}:${name}`;
  });
}

for (const store of await testStores()) {
  describe(`separate server processes on ${store}`, () => {
    const dir = mkdtempSync(join(tmpdir(), "tern-procs-"));
    const dbs: { url: string; drop(): Promise<void> }[] = [];
    let a: ClusterProcess, b: ClusterProcess;
    const bOptions = () => ({ name: "clusterB", initialFailoverVersion: 2, dir, port: b?.port, databaseUrl: dbs[1]?.url });
    beforeAll(async () => {
      if (store === "postgres") dbs.push(await createTestDatabase(), await createTestDatabase());
      [a, b] = await Promise.all([
        startClusterProcess({ name: "clusterA", initialFailoverVersion: 1, dir, databaseUrl: dbs[0]?.url }),
        startClusterProcess(bOptions()),
      ]);
      for (const [x, y] of [[a, b], [b, a]] as const) {
        const r = await runTern(["-address", x.address, "admin", "cluster", "upsert-remote-cluster", "--frontend_address", y.address]);
        expect(r.code).toBe(0);
      }
    });
    afterAll(async () => {
      await Promise.all([a?.stop(), b?.stop()]);
      for (const d of dbs) await d.drop();
      rmSync(dir, { recursive: true, force: true });
    });

    test("TestPassiveKilledMidStreamResumesWithIdenticalHistories", async () => {
      await client(a).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await eventually(async () => expect((await client(b).describeNamespace({ namespace: "orders" })).namespace).toBeDefined(), { timeout: 20_000 });
      const ids = ["w0", "w1", "w2", "w3"];
      for (const id of ids) await client(a).startWorkflowExecution({ namespace: "orders", workflowId: id, workflowType: "t", taskQueue: "q" });
      const acked: string[] = [];
      let stop = false;
      const load = ids.map(async (id) => {
        for (let n = 0; !stop; n++) {
          const name = `${id}-${n}`;
          await client(a).signalWorkflowExecution({ namespace: "orders", workflowExecution: { workflowId: id }, signalName: name, requestId: name });
          acked.push(name);
        }
      });
      await eventually(async () => expect((await history(b, "w0")).length).toBeGreaterThan(5), { timeout: 20_000 }); // B is streaming
      await b.crash(); // SIGKILL mid-stream: no graceful shutdown, a stale data dir lock on PGlite
      const atCrash = acked.length;
      await eventually(() => expect(acked.length).toBeGreaterThan(atCrash + 40), { timeout: 20_000 }); // A goes on alone
      b = await startClusterProcess(bOptions());
      await eventually(() => expect(acked.length).toBeGreaterThan(atCrash + 80), { timeout: 20_000 });
      stop = true;
      await Promise.all(load);
      for (const id of ids) {
        const want = await history(a, id);
        await eventually(async () => expect(await history(b, id)).toEqual(want), { timeout: 30_000 });
        expect(want.map((e) => Number(e.split("@")[0]))).toEqual(want.map((_e, i) => i + 1)); // no gap on A either
      }
      const onB = (await Promise.all(ids.map((id) => history(b, id)))).flat().map((e) => e.split(":")[2]).filter(Boolean);
      expect(new Set(onB).size).toBe(onB.length); // no duplicate
      for (const name of acked) expect(onB).toContain(name);
      const status = await runTern(["--address", b.address, "replication", "status", "-o", "json"]);
      expect(status.code).toBe(0);
      const remote = JSON.parse(status.stdout).remotes.find((r: { clusterName: string }) => r.clusterName === "clusterA");
      for (const s of remote.inbound ?? []) expect(Number(s.lagTasks ?? 0)).toBe(0);
    });
  });
}
