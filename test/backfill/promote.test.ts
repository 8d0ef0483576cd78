import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

describe("promote a local namespace to global", () => {
  let on: TestCluster, off: TestCluster;
  beforeAll(async () => {
    [on, off] = await Promise.all([
      startTestCluster({ store: "pglite", name: "clusterA", initialFailoverVersion: 3 }),
      startTestCluster({ store: "pglite", name: "clusterZ", enableGlobalNamespace: false }),
    ]);
  });
  afterAll(() => Promise.all([on.destroy(), off.destroy()]));

  test("TestPromoteTakesThisClustersInitialVersionAndIsIdempotent", async () => {
    const wf = on.client(WorkflowService);
    await wf.registerNamespace({ namespace: "p" });
    const first = (await wf.updateNamespace({ namespace: "p", promoteNamespace: true, description: "now global" })).namespace!;
    expect(first.isGlobalNamespace).toBe(true);
    expect(first.failoverVersion).toBe(3n);
    expect(first.replicationConfig!.activeClusterName).toBe("clusterA");
    expect(first.namespaceInfo!.description).toBe("now global");
    const again = (await wf.updateNamespace({ namespace: "p", promoteNamespace: true })).namespace!;
    expect(again.failoverVersion).toBe(3n);
    expect(again.configVersion).toBe(first.configVersion);
  });

  test("TestPromoteNeedsEnableGlobalNamespace", async () => {
    const wf = off.client(WorkflowService);
    await wf.registerNamespace({ namespace: "p" });
    await rejects(wf.updateNamespace({ namespace: "p", promoteNamespace: true }), Code.FailedPrecondition, "enableGlobalNamespace");
  });
});
