import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { Health } from "../../src/gen/grpc/health/v1/health_pb";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { startTestCluster, type TestCluster } from "../support/server";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** The code and message a call failed with. */
const failure = (call: Promise<unknown>) =>
  call.then(
    () => ({ code: "answered", message: "" }),
    (e: unknown) => ({ code: Code[ConnectError.from(e).code], message: ConnectError.from(e).rawMessage }),
  );

describe("an error quoting a client's input shows a long one shortened (a prefix, an ellipsis, its length), a short one as before", () => {
  let cluster: TestCluster;
  const logs: string[] = [];
  beforeAll(async () => {
    cluster = await startTestCluster({ store: "pglite", serverOptions: { log: createLogger({ level: "info", write: (l) => logs.push(l) }) } });
    await cluster.client(WorkflowService).registerNamespace({ namespace: "g", isGlobalNamespace: true, clusters: ["active"], activeClusterName: "active" });
  });
  afterAll(() => cluster.destroy());

  const big = "x".repeat(1_000_000);
  const bigShown = `"${"x".repeat(300)}…" (1000000 characters)`;

  test("a 1 MB cluster name, address, service or email: about 400 characters in the answer and the log", async () => {
    const op = cluster.client(OperatorService);
    const wf = cluster.client(WorkflowService);
    const admin = cluster.client(AdminService);
    const before = logs.length;
    expect(await failure(op.describeCluster({ clusterName: big }))).toEqual({ code: "NotFound", message: `cluster ${bigShown} is not known to cluster active (known: active)` });
    expect(await failure(op.removeRemoteCluster({ clusterName: big }))).toEqual({ code: "NotFound", message: `cluster ${bigShown} is not known to cluster active (known: active)` });
    expect(await failure(op.failoverNamespace({ namespace: "g", targetCluster: big }))).toEqual({ code: "InvalidArgument", message: `cluster ${bigShown} is not one of namespace g's clusters (active)` });
    expect(await failure(wf.updateNamespace({ namespace: "g", activeClusterName: big }))).toEqual({ code: "NotFound", message: `cluster ${bigShown} is not known to cluster active (known: active)` });
    expect(await failure(wf.registerNamespace({ namespace: "e", ownerEmail: big }))).toEqual({ code: "InvalidArgument", message: `owner email ${bigShown} is not an email address` });
    expect(await failure(admin.verifyReplication({ namespace: "g", cluster: big }))).toEqual({ code: "NotFound", message: `cluster ${bigShown} is not a remote cluster of active (it has no remote cluster)` });
    expect(await failure(admin.listReplicationDlq({ sourceCluster: big, pageSize: 10 }))).toMatchObject({ code: "NotFound", message: expect.stringContaining(`cluster ${bigShown} is not known here`) });
    expect(await failure(cluster.client(Health).check({ service: big }))).toEqual({ code: "NotFound", message: `unknown service ${bigShown}` });
    expect(await failure(op.addOrUpdateRemoteCluster({ frontendAddress: big }))).toEqual({
      code: "InvalidArgument",
      message: `frontend address ${bigShown} names no port: give host:port (host:7233 for tern's default), or an http(s) URL, which is taken at its scheme's port`,
    });
    const upsert = await failure(op.addOrUpdateRemoteCluster({ frontendAddress: `http://${big}` }));
    expect(upsert.message).toStartWith(`cannot reach a tern cluster at "http://${"x".repeat(293)}…" (1000007 characters): `);
    expect(Math.max(...logs.slice(before).map((l) => l.length))).toBeLessThan(1000);
  });

  test("short inputs read as before", async () => {
    const op = cluster.client(OperatorService);
    expect(await failure(op.describeCluster({ clusterName: "clusterZ" }))).toEqual({ code: "NotFound", message: "cluster clusterZ is not known to cluster active (known: active)" });
    expect(await failure(cluster.client(Health).check({ service: "nope" }))).toEqual({ code: "NotFound", message: 'unknown service "nope"' });
    expect(await failure(cluster.client(WorkflowService).registerNamespace({ namespace: "e", ownerEmail: "nobody" }))).toEqual({ code: "InvalidArgument", message: 'owner email "nobody" is not an email address' });
  });
});
