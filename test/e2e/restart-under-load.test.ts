import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startClusterProcess, type ClusterProcess } from "../../scripts/lib/cluster-process";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const client = (p: ClusterProcess) => createClient(WorkflowService, createConnectTransport({ baseUrl: `http://${p.address}` }));

/** The signal names in the histories of runs ids on p, every page. */
async function signalsOn(p: ClusterProcess, ids: string[]): Promise<string[]> {
  const names: string[] = [];
  for (const workflowId of ids) {
    let nextPageToken: Uint8Array | undefined;
    do {
      const page = await client(p).getWorkflowExecutionHistory({ namespace: "orders", execution: { workflowId }, maximumPageSize: 1000, nextPageToken });
      for (const e of page.history!.events) if (e.attributes.case === "workflowExecutionSignaledEventAttributes") names.push(e.attributes.value.signalName);
      nextPageToken = page.nextPageToken.length ? page.nextPageToken : undefined;
    } while (nextPageToken);
  }
  return names;
}

/** Clients writing to p back to back until stopped; acked holds what p acknowledged. */
function writeLoad(p: ClusterProcess, ids: string[]) {
  const acked: string[] = [];
  let stopped = false;
  const done = ids.map(async (workflowId) => {
    for (let n = 0; !stopped; n++) {
      const signalName = `${workflowId}-${n}`;
      const call = { namespace: "orders", workflowId, workflowType: "t", taskQueue: "q", signalName, requestId: signalName };
      // A call the stop refused or cut is not acknowledged; its writer waits a moment and goes on.
      await client(p).signalWithStartWorkflowExecution(call).then(() => acked.push(signalName), () => Bun.sleep(20));
    }
  });
  return { acked, stop: () => ((stopped = true), Promise.all(done)) };
}

describe("a PGlite server stopped under load", () => {
  const dir = mkdtempSync(join(tmpdir(), "tern-restart-load-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  // PGlite answers within microtasks: under steady load the event loop never reached its timers, so
  // the drain never ended (nor the stop's own limit) and the server served on until killed.
  test("TestSigtermUnderLoadStopsAfterItsDrainAndLosesNoAcknowledgedWrite", async () => {
    const options = { name: "clusterA", initialFailoverVersion: 1, dir, shutdownDrainDuration: "1s" };
    let a = await startClusterProcess(options);
    try {
      await client(a).registerNamespace({ namespace: "orders" });
      const ids = Array.from({ length: 32 }, (_, i) => `w${i}`);
      const load = writeLoad(a, ids);
      await eventually(() => expect(load.acked.length).toBeGreaterThan(200), { timeout: 30_000 });
      const t0 = Date.now();
      a.terminate();
      // The drain (1 s) and the grace for calls in flight (5 s); a stop that never ends is killed at 20 s.
      const code = await a.stop(20_000);
      const tookMs = Date.now() - t0;
      await load.stop();
      expect({ code, underGrace: tookMs < 6_000 }).toEqual({ code: 0, underGrace: true });
      a = await startClusterProcess(options);
      const present = new Set(await signalsOn(a, ids));
      expect(load.acked.filter((name) => !present.has(name))).toEqual([]);
    } finally {
      await a.stop();
    }
  });
});
