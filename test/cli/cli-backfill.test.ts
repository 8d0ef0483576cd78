import { describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type ConnectRouter, createRouterTransport } from "@connectrpc/connect";
import { createCli } from "../../src/cli/cli";
import { BackfillService, type StartBackfillRequest } from "../../src/gen/tern/admin/v1/backfill_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { UpdateNamespaceResponseSchema, type UpdateNamespaceRequest } from "../../src/gen/tern/workflow/v1/namespace_pb";

async function run(argv: string[], router: (r: ConnectRouter) => void) {
  let out = "";
  const cli = createCli({ createTransport: () => createRouterTransport(router), stdout: (t) => void (out += t), stderr: (t) => void (out += t) });
  return { code: await cli.run(argv), out };
}

describe("tern operator namespace backfill / backfill-status / update --promote-global", () => {
  test("backfill-status prints one row per source with done/total", async () => {
    const at = timestampFromDate(new Date("2026-01-02T03:04:05Z"));
    const { code, out } = await run(["operator", "namespace", "backfill-status", "-n", "orders"], (r) =>
      r.service(BackfillService, {
        getBackfillStatus: (req) => ({
          namespace: req.namespace,
          jobs: [{ sourceCluster: "clusterA", status: "RUNNING", done: 200n, total: 1000n, startedTime: at, updatedTime: at }],
        }),
      }),
    );
    expect(code).toBe(0);
    expect(out).toMatch(/SOURCE\s+STATUS\s+DONE\/TOTAL/);
    expect(out).toMatch(/clusterA\s+RUNNING\s+200\/1000/);
  });

  test("backfill-status without jobs says so", async () => {
    const { out } = await run(["operator", "namespace", "backfill-status", "orders"], (r) =>
      r.service(BackfillService, { getBackfillStatus: (req) => ({ namespace: req.namespace, jobs: [] }) }),
    );
    expect(out).toBe("Namespace orders: no backfill into this cluster (its executions were written here or came by replication)\n");
  });

  test("backfill sends restart only with --restart, and says what the start replaced", async () => {
    const seen: StartBackfillRequest[] = [];
    const router = (r: ConnectRouter) =>
      r.service(BackfillService, {
        startBackfill: (req) => {
          seen.push(req);
          const replaced = req.restart ? { sourceCluster: "clusterA", status: "RUNNING", done: 200n, total: 1000n } : undefined;
          return { namespace: req.namespace, sourceCluster: "clusterA", replaced };
        },
      });
    expect(await run(["operator", "namespace", "backfill", "orders"], router)).toEqual({ code: 0, out: "Backfill of namespace orders from clusterA started\n" });
    expect(await run(["operator", "namespace", "backfill", "orders", "--restart"], router)).toEqual({
      code: 0,
      out: "Backfill of namespace orders from clusterA started again from the beginning (it was RUNNING at 200/1000 runs)\n",
    });
    expect(seen.map((r) => r.restart)).toEqual([false, true]);
  });

  test("namespace describe says why a backfill waits or ended, not only its count", async () => {
    const jobs = [
      { sourceCluster: "clusterA", status: "RUNNING", done: 0n, total: 21n, lastError: "paused: the connection to cluster clusterA is disabled here (it goes on once enabled)" },
      { sourceCluster: "clusterC", status: "DONE", done: 5n, total: 5n, lastError: "" },
    ];
    const { code, out } = await run(["operator", "namespace", "describe", "orders"], (r) => {
      r.service(WorkflowService, {
        describeNamespace: () => ({
          namespace: { namespaceInfo: { name: "orders", id: "id-orders", state: 1 }, isGlobalNamespace: true, replicationConfig: { activeClusterName: "clusterA", clusters: ["clusterA", "clusterB"] } },
        }),
      });
      r.service(BackfillService, { getBackfillStatus: (req) => ({ namespace: req.namespace, jobs }) });
    });
    expect(code).toBe(0);
    expect(out).toContain(
      "Backfill from clusterA: RUNNING 0/21 (paused: the connection to cluster clusterA is disabled here (it goes on once enabled))\nBackfill from clusterC: DONE 5/5\n",
    );
  });

  test("update --promote-global sends promote_namespace", async () => {
    let seen: UpdateNamespaceRequest | undefined;
    const { code } = await run(["operator", "namespace", "update", "-n", "orders", "--promote-global"], (r) =>
      r.service(WorkflowService, {
        updateNamespace: (req) => ((seen = req), create(UpdateNamespaceResponseSchema, {})),
      }),
    );
    expect(code).toBe(0);
    expect(seen?.promoteNamespace).toBe(true);
  });
});
