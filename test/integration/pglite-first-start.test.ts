import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { clusterConfigYaml, freePort, repoRoot, startClusterProcess, type ClusterProcess } from "../../scripts/lib/cluster-process";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const dir = mkdtempSync(join(tmpdir(), "tern-first-start-"));
const running: ClusterProcess[] = [];
afterAll(async () => {
  for (const p of running) await p.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** What PGlite's initdb has written to dataDir so far (tern's own files left out). */
function initdbFiles(dataDir: string): string[] {
  try {
    return readdirSync(dataDir).filter((f) => !f.startsWith("tern."));
  } catch {
    return [];
  }
}

describe("a PGlite cluster's first start", () => {
  test("TestKilledDuringInitdbStartsAgain: a kill -9 while PGlite creates its database leaves a dir the next start completes, not one refused for ever", async () => {
    const name = "clusterA";
    const home = join(dir, name);
    const dataDir = join(home, "data");
    mkdirSync(home, { recursive: true });
    const port = await freePort();
    // The config startClusterProcess writes for the restart below: same data dir, same port.
    const configPath = join(home, "tern.yaml");
    writeFileSync(configPath, clusterConfigYaml({ name, initialFailoverVersion: 1, dir, port, dataDir, logLevel: "warn" }));
    const first = Bun.spawn([process.execPath, "src/main.ts", "--config", configPath], { cwd: repoRoot, stdout: "ignore", stderr: "ignore" });
    // initdb writes the dir's files over a few hundred ms: kill as soon as the first lands
    // (an operator's second Ctrl-C, an OOM kill, a container stopped during a slow first start).
    const deadline = Date.now() + 60_000;
    while (initdbFiles(dataDir).length === 0 && first.exitCode === null && Date.now() < deadline) await Bun.sleep(2);
    first.kill("SIGKILL");
    await first.exited;
    const left = initdbFiles(dataDir);
    expect(left.length).toBeGreaterThan(0);

    const again = await startClusterProcess({ name, initialFailoverVersion: 1, dir, port, logLevel: "warn" });
    running.push(again);
    const wf = createClient(WorkflowService, createConnectTransport({ baseUrl: `http://${again.address}` }));
    await wf.registerNamespace({ namespace: "orders" });
    await wf.startWorkflowExecution({ namespace: "orders", workflowId: "w", workflowType: "t", taskQueue: "q" });
    expect(await again.stop()).toBe(0);
    running.pop();
    // And the database it made is a whole one: a third start finds the run.
    const third = await startClusterProcess({ name, initialFailoverVersion: 1, dir, port, logLevel: "warn" });
    running.push(third);
    const wf3 = createClient(WorkflowService, createConnectTransport({ baseUrl: `http://${third.address}` }));
    const described = await wf3.describeWorkflowExecution({ namespace: "orders", execution: { workflowId: "w" } });
    expect(described.workflowExecutionInfo?.execution?.workflowId).toBe("w");
  });
});
