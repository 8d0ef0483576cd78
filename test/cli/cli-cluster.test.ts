import { describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type AddOrUpdateRemoteClusterRequest,
  ClusterInfoSchema,
  type RemoveRemoteClusterRequest,
} from "../../src/gen/tern/operator/v1/service_pb";
import { ForwardedCallsSchema } from "../../src/gen/tern/common/v1/common_pb";
import { runCli } from "./harness";

const clusterA = create(ClusterInfoSchema, {
  clusterName: "clusterA",
  clusterId: "id-a",
  rpcAddress: "127.0.0.1:7233",
  isCurrentCluster: true,
  enableConnection: true,
  initialFailoverVersion: 1n,
  historyShardCount: 4,
});
const clusterB = create(ClusterInfoSchema, {
  clusterName: "clusterB",
  clusterId: "id-b",
  rpcAddress: "localhost:8233",
  enableConnection: true,
  connectionState: "connected",
  initialFailoverVersion: 2n,
  historyShardCount: 8,
});

/** A fake upsert that records each request and answers with clusterB as asked. */
function upsertFake(seen: AddOrUpdateRemoteClusterRequest[]) {
  return {
    addOrUpdateRemoteCluster(req: AddOrUpdateRemoteClusterRequest) {
      seen.push(req);
      const enable = req.enableRemoteClusterConnection ?? true;
      const cluster = { ...clusterB, enableConnection: enable, connectionState: enable ? "connecting" : "disabled" };
      return { cluster: create(ClusterInfoSchema, { ...cluster, rpcAddress: req.frontendAddress }) };
    },
  };
}

describe("the seed runbook's tctl spelling works verbatim", () => {
  test("upsert-remote-cluster with -address and --frontend_address leaves enable unset", async () => {
    const seen: AddOrUpdateRemoteClusterRequest[] = [];
    const r = await runCli(
      ["-address", "127.0.0.1:7233", "admin", "cluster", "upsert-remote-cluster", "--frontend_address", "localhost:8233"],
      { operator: upsertFake(seen) },
    );
    expect(r.code).toBe(0);
    expect(r.addresses).toEqual(["http://127.0.0.1:7233"]);
    expect(seen[0]!.frontendAddress).toBe("localhost:8233");
    expect(seen[0]!.enableRemoteClusterConnection).toBeUndefined();
    expect(r.stdout).toBe(
      "Cluster clusterB at localhost:8233: connection enabled (connecting); initial failover version 2, 8 shards\n",
    );
  });

  test("--enable_connection false as a separate value disables the connection", async () => {
    const seen: AddOrUpdateRemoteClusterRequest[] = [];
    const argv = ["-address", "127.0.0.1:8233", "admin", "cluster", "upsert-remote-cluster", "--frontend_address", "localhost:7233", "--enable_connection", "false"];
    const r = await runCli(argv, { operator: upsertFake(seen) });
    expect(r.code).toBe(0);
    expect(r.addresses).toEqual(["http://127.0.0.1:8233"]);
    expect(seen[0]!.enableRemoteClusterConnection).toBe(false);
    expect(r.stdout).toContain("connection disabled");
  });

  test("remove-remote-cluster --cluster sends the name", async () => {
    const seen: RemoveRemoteClusterRequest[] = [];
    const r = await runCli(["-address", "127.0.0.1:7233", "admin", "cluster", "remove-remote-cluster", "--cluster", "clusterB"], {
      operator: { removeRemoteCluster: (req) => (seen.push(req), {}) },
    });
    expect(r.code).toBe(0);
    expect(seen[0]!.clusterName).toBe("clusterB");
    expect(r.stdout).toBe("Removed remote cluster clusterB\n");
  });
});

describe("operator cluster", () => {
  test("upsert --frontend-address and --enable-connection=false", async () => {
    const seen: AddOrUpdateRemoteClusterRequest[] = [];
    const on = await runCli(["operator", "cluster", "upsert", "--frontend-address", "localhost:8233", "--enable-connection"], {
      operator: upsertFake(seen),
    });
    const off = await runCli(["--address", "h:1", "operator", "cluster", "upsert", "--frontend-address=h:2", "--enable-connection=false", "-o", "json"], {
      operator: upsertFake(seen),
    });
    expect([on.code, off.code]).toEqual([0, 0]);
    expect(seen.map((s) => s.enableRemoteClusterConnection)).toEqual([true, false]);
    const json = JSON.parse(off.stdout);
    expect(json.cluster.clusterName).toBe("clusterB");
    expect(json.cluster.connectionState).toBe("disabled");
  });

  test("upsert without --frontend-address is a usage error and calls nothing", async () => {
    const seen: AddOrUpdateRemoteClusterRequest[] = [];
    const r = await runCli(["operator", "cluster", "upsert"], { operator: upsertFake(seen) });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--frontend-address is required");
    expect(seen).toEqual([]);
  });

  test("remove --name (or positional); a refusal prints one error line", async () => {
    const r = await runCli(["operator", "cluster", "remove", "--name", "clusterB"], {
      operator: {
        removeRemoteCluster: () => {
          throw new ConnectError("cluster clusterB is still listed by namespace(s) orders; remove it from their clusters first", Code.FailedPrecondition);
        },
      },
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      "error: failed_precondition: cluster clusterB is still listed by namespace(s) orders; remove it from their clusters first\n",
    );
    const both = await runCli(["operator", "cluster", "remove", "clusterB", "--name", "clusterC"]);
    expect(both.code).toBe(2);
  });

  test("remove's usage says the cluster may be the argument: its help and its refusals", async () => {
    const none = await runCli(["admin", "cluster", "remove-remote-cluster"]);
    expect([none.code, none.stderr.split("\n")[0]]).toEqual([2, "error: --cluster is required (or give the cluster as the argument)"]);
    const both = await runCli(["operator", "cluster", "remove", "clusterB", "--name", "clusterC"]);
    expect(both.stderr.split("\n")[0]).toBe('error: cluster given twice ("clusterC" and "clusterB")');
    const help = await runCli(["operator", "cluster", "remove", "--help"]);
    expect(help.stdout).toMatch(/^ {6}--name NAME +Name of the remote cluster \(or give it as the argument\)$/m);
  });

  test("list shows address, enable flag, connection state, initial version and shards", async () => {
    const disabledC = create(ClusterInfoSchema, { ...clusterB, clusterName: "clusterC", clusterId: "id-c", enableConnection: false, connectionState: "disabled", initialFailoverVersion: 3n });
    const r = await runCli(["operator", "cluster", "list"], {
      operator: { listClusters: () => ({ clusters: [clusterA, clusterB, disabledC] }) },
    });
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^NAME +ID +ADDRESS +CURRENT +ENABLED +CONNECTION +INITIAL VERSION +SHARDS$/);
    expect(lines[1]).toMatch(/^clusterA +id-a +127\.0\.0\.1:7233 +true +true +current +1 +4$/);
    expect(lines[2]).toMatch(/^clusterB +id-b +localhost:8233 +false +true +connected +2 +8$/);
    expect(lines[3]).toMatch(/^clusterC +id-c +localhost:8233 +false +false +disabled +3 +8$/);
  });

  test("list's CURRENT and ENABLED both read true or false, as temporal operator cluster list prints IsConnectionEnabled; -o json is unchanged", async () => {
    // Was: CURRENT "yes" or blank beside ENABLED "true"/"false", and this cluster's ENABLED blank.
    const fake = { operator: { listClusters: () => ({ clusters: [clusterA, clusterB] }) } };
    const r = await runCli(["operator", "cluster", "list"], fake);
    const cells = r.stdout.trimEnd().split("\n").slice(1).map((l) => l.split(/ {2,}/).slice(3, 5));
    expect(cells).toEqual([["true", "true"], ["false", "true"]]);
    const json = JSON.parse((await runCli(["operator", "cluster", "list", "-o", "json"], fake)).stdout);
    expect(json.clusters.map((c: Record<string, unknown>) => [c.clusterName, c.isCurrentCluster, c.enableConnection])).toEqual([
      ["clusterA", true, true],
      ["clusterB", undefined, true],
    ]);
  });

  test("describe of a remote shows its connection state", async () => {
    let asked = "";
    const r = await runCli(["operator", "cluster", "describe", "clusterB"], {
      operator: { describeCluster: (req) => ((asked = req.clusterName), { cluster: clusterB }) },
    });
    expect(asked).toBe("clusterB");
    expect(r.stdout).toMatch(/^ConnectionState: +connected$/m);
    expect(r.stdout).toMatch(/^RpcAddress: +localhost:8233$/m);
    expect(r.stdout).toMatch(/^InitialFailoverVersion: +2$/m);
    expect(r.stdout).not.toContain("ServerVersion");
  });

  test("describe of a remote that left forwarded calls unanswered prints the NOTE list and replication status print", async () => {
    const lastUnansweredAt = timestampFromDate(new Date(Date.now() - 3_000));
    const forwardedCalls = create(ForwardedCallsSchema, { timeoutsLastMinute: 2, lastUnansweredType: "SignalWorkflowExecution", lastUnansweredError: "deadline exceeded", lastUnansweredAt });
    const failing = create(ClusterInfoSchema, { ...clusterB, forwardedCalls });
    const operator = { describeCluster: (req: { clusterName: string }) => ({ cluster: req.clusterName ? failing : clusterA }) };
    const r = await runCli(["operator", "cluster", "describe", "clusterB"], { operator });
    expect(r.stdout).toMatch(/^ConnectionState: +connected$/m);
    // "(3 s ago)" as the CLI read its clock: any count of seconds, on a loaded host.
    const note = (out: string) => out.slice(out.indexOf("NOTE")).replace(/\(\d+ s ago\)/, "(N s ago)");
    expect(note(r.stdout)).toStartWith(
      "NOTE: 2 call(s) clusterA forwarded to clusterB in the last minute went unanswered (2 timed out, 0 unreachable), the last at " +
        `${timestampDate(lastUnansweredAt).toISOString()} (N s ago): SignalWorkflowExecution, deadline exceeded; it has answered none since this server started.`,
    );
    // The same line the list prints; none for a remote that answered them all, nor in JSON (forwardedCalls says it).
    const listed = await runCli(["operator", "cluster", "list"], { operator: { listClusters: () => ({ clusters: [clusterA, failing] }) } });
    expect(note(r.stdout)).toBe(note(listed.stdout));
    expect((await runCli(["operator", "cluster", "describe", "clusterB"], { operator: { describeCluster: () => ({ cluster: clusterB }) } })).stdout).not.toContain("NOTE");
    expect((await runCli(["operator", "cluster", "describe", "clusterB", "-o", "json"], { operator })).stdout).not.toContain("NOTE");
  });

  test("--help documents the tctl spelling and the columns", async () => {
    const upsert = await runCli(["admin", "cluster", "upsert-remote-cluster", "--help"]);
    expect(upsert.code).toBe(0);
    expect(upsert.stdout).toContain("--frontend-address HOST:PORT");
    expect(upsert.stdout).toContain("--enable_connection false");
    const list = await runCli(["operator", "cluster", "list", "-h"]);
    // Was: "(connected, connecting, disabled or error: ...)", while the list shows "current" for
    // this cluster and "unknown" for a remote whose streams restart.
    expect(list.stdout).toContain("CONNECTION (current for this cluster; for a remote connected, connecting, unknown (its\nstreams restarting), disabled or error: ...)");
    const group = await runCli(["admin", "cluster"]);
    expect(group.stdout).toMatch(/^ {2}remove-remote-cluster +Disconnect a remote cluster/m);
  });

  test("remove's --help says how to take the remote out of a namespace, not 'from --cluster', its own flag there", async () => {
    // Was: "must drop the remote from --cluster first", which in remove-remote-cluster is the flag naming the remote.
    for (const argv of [["admin", "cluster", "remove-remote-cluster", "--help"], ["operator", "cluster", "remove", "--help"]]) {
      const r = await runCli(argv);
      expect(r.code).toBe(0);
      expect(r.stdout).not.toContain("from --cluster");
      expect(r.stdout).toContain("take the remote out of its clusters\nfirst, on its active cluster ('tern operator namespace update -n NS --cluster ...', naming\nthe clusters it keeps).");
    }
  });
});
