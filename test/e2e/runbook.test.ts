/**
 * The seed's runbook "Set up Multi-Cluster Replication in v1.14 and later", run verbatim
 * through bin/tern against two server processes; only `tctl` becomes `tern` and the
 * ports 7233/8233 become the free ports the clusters got.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ClusterProcess, runTern, startClusterProcess, type TernResult } from "../../scripts/lib/cluster-process";
import { eventually } from "../support/eventually";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** The runbook's commands as the seed writes them. */
const RUNBOOK = {
  addBIntoA: `tctl -address 127.0.0.1:7233 admin cluster upsert-remote-cluster --frontend_address "localhost:8233"`,
  addAIntoB: `tctl -address 127.0.0.1:8233 admin cluster upsert-remote-cluster --frontend_address "localhost:7233"`,
  disableInA: `tctl -address 127.0.0.1:7233 admin cluster upsert-remote-cluster --frontend_address "localhost:8233" --enable_connection false`,
  disableInB: `tctl -address 127.0.0.1:8233 admin cluster upsert-remote-cluster --frontend_address "localhost:7233" --enable_connection false`,
  deleteFromA: `tctl -address 127.0.0.1:7233 admin cluster remove-remote-cluster --cluster "clusterB"`,
  deleteFromB: `tctl -address 127.0.0.1:8233 admin cluster remove-remote-cluster --cluster "clusterA"`,
};

/** Splits a shell line into words, honouring double quotes (all the runbook uses). */
function shellWords(line: string): string[] {
  return [...line.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!);
}

describe("seed runbook: multi-cluster replication set-up with tctl commands", () => {
  let dir: string;
  let a: ClusterProcess;
  let b: ClusterProcess;

  /** Runs one runbook line with tern and the real ports; asserts exit 0. */
  async function step(line: string): Promise<TernResult> {
    const ported = line.replaceAll(":7233", `:${a.port}`).replaceAll(":8233", `:${b.port}`);
    const [tool, ...args] = shellWords(ported);
    expect(tool).toBe("tctl");
    const r = await runTern(args);
    if (r.code !== 0) throw new Error(`tern ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
    return r;
  }

  /** The remote's row of `tern operator cluster list` on the cluster at address. */
  async function remoteRow(on: ClusterProcess, remote: string): Promise<string | undefined> {
    const r = await runTern(["--address", on.address, "operator", "cluster", "list"]);
    expect(r.code).toBe(0);
    return r.stdout.split("\n").find((l) => l.startsWith(`${remote} `));
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "tern-runbook-"));
    [a, b] = await Promise.all([
      startClusterProcess({ name: "clusterA", initialFailoverVersion: 1, dir }),
      startClusterProcess({ name: "clusterB", initialFailoverVersion: 2, dir }),
    ]);
  });

  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    rmSync(dir, { recursive: true, force: true });
  });

  test("add cluster B into A and A into B: each lists and describes the other", async () => {
    expect((await step(RUNBOOK.addBIntoA)).stdout).toContain(`Cluster clusterB at localhost:${b.port}: connection enabled`);
    expect((await step(RUNBOOK.addAIntoB)).stdout).toContain(`Cluster clusterA at localhost:${a.port}: connection enabled`);
    // A's streams fail ("error: ... not connected") until B knows A too; the state turns
    // "connected" when a retried long poll first answers (about 10 s here).
    const bRow = new RegExp(`^clusterB +\\S+ +localhost:${b.port} +false +true +connected +2 +4$`);
    const aRow = new RegExp(`^clusterA +\\S+ +localhost:${a.port} +false +true +connected +1 +4$`);
    await eventually(async () => expect(await remoteRow(a, "clusterB")).toMatch(bRow), { timeout: 20_000, interval: 250 });
    await eventually(async () => expect(await remoteRow(b, "clusterA")).toMatch(aRow), { timeout: 20_000, interval: 250 });
    const described = await runTern(["-address", a.address, "operator", "cluster", "describe", "clusterB", "-o", "json"]);
    expect(described.code).toBe(0);
    const info = JSON.parse(described.stdout).cluster;
    expect(info).toMatchObject({ clusterName: "clusterB", rpcAddress: `localhost:${b.port}`, enableConnection: true, initialFailoverVersion: "2" });
  });

  test("disable both connections: both read disabled", async () => {
    expect((await step(RUNBOOK.disableInA)).stdout).toContain("connection disabled");
    expect((await step(RUNBOOK.disableInB)).stdout).toContain("connection disabled");
    expect(await remoteRow(a, "clusterB")).toMatch(/ false +false +disabled +2 +4$/);
    expect(await remoteRow(b, "clusterA")).toMatch(/ false +false +disabled +1 +4$/);
  });

  test("delete both connections: each cluster lists only itself", async () => {
    expect((await step(RUNBOOK.deleteFromA)).stdout).toBe("Removed remote cluster clusterB\n");
    expect((await step(RUNBOOK.deleteFromB)).stdout).toBe("Removed remote cluster clusterA\n");
    expect(await remoteRow(a, "clusterB")).toBeUndefined();
    expect(await remoteRow(b, "clusterA")).toBeUndefined();
    const again = await runTern(shellWords(RUNBOOK.deleteFromA.replace(":7233", `:${a.port}`)).slice(1));
    expect(again.code).toBe(1);
    expect(again.stderr).toBe("error: not_found: cluster clusterB is not known to cluster clusterA (known: clusterA)\n");
  });
});
