import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import type { TestCluster } from "../support/server";
import { connectAll, expectActiveOn, startClusters } from "../failover/mesh";

setDefaultTimeout(120_000);
const T = { workflowType: "t", taskQueue: "q" };
describe("probe", () => {
  let a: TestCluster, b: TestCluster, c: TestCluster;
  beforeAll(async () => {
    [a, b, c] = await startClusters("pglite", [{}, {}, {}]);
    await connectAll([a, b, c]);
    await a.client(WorkflowService).registerNamespace({ namespace: "pair", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
    await a.client(WorkflowService).registerNamespace({ namespace: "all", isGlobalNamespace: true, clusters: ["clusterA", "clusterB", "clusterC"] });
    await expectActiveOn(c, "all", "clusterA", 1n);
    await expectActiveOn(b, "pair", "clusterA", 1n);
  });
  afterAll(() => Promise.all([a, b, c].map((x) => x.destroy())));
  test("skip", async () => {
    await new Promise((r) => setTimeout(r, 12000));
    for (let i = 0; i < 8; i++) await a.client(WorkflowService).startWorkflowExecution({ namespace: "pair", workflowId: `p${i}`, ...T });
    const t0 = Date.now();
    const r = await a.client(OperatorService).failoverNamespace({ namespace: "all", targetCluster: "clusterC", timeout: durationFromMs(15_000) }).then(() => "ok", (e) => e.message);
    console.log("failover all -> C:", r, Date.now() - t0, "ms");
  });
});
