import { describe, expect, test } from "bun:test";
import { create, fromJson } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { GetReplicationStatusResponseSchema } from "../../src/gen/tern/admin/v1/service_pb";
import type { FailoverNamespaceRequest } from "../../src/gen/tern/operator/v1/service_pb";
import { NamespaceDescriptionSchema, ReplicationState } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { runCli } from "./harness";

const status = create(GetReplicationStatusResponseSchema, {
  clusterName: "clusterA",
  remotes: [
    {
      clusterName: "clusterB",
      connectionState: "connected",
      enableConnection: true,
      inbound: [{ shardId: 1, maxTaskId: 10n, ackedTaskId: 10n }],
      outbound: [{ shardId: 1, maxTaskId: 42n, ackedTaskId: 40n, lagTasks: 2n, lagMs: 150n }],
      namespaceMaxTaskId: 3n,
      namespaceAckedTaskId: 3n,
    },
  ],
});

function orders(active: string, failoverVersion: bigint) {
  return create(NamespaceDescriptionSchema, {
    namespaceInfo: { name: "orders", id: "id-orders", state: 1 },
    isGlobalNamespace: true,
    failoverVersion,
    replicationConfig: { activeClusterName: active, clusters: ["clusterA", "clusterB"], state: ReplicationState.NORMAL },
    failoverHistory: [
      { failoverTime: timestampFromDate(new Date("2025-01-02T03:04:05Z")), fromCluster: "clusterA", toCluster: "clusterB", failoverVersion: 102n },
      { failoverTime: timestampFromDate(new Date("2025-01-02T03:09:00Z")), fromCluster: "clusterB", toCluster: "clusterA", failoverVersion: 201n },
    ],
  });
}

describe("replication status", () => {
  test("table: one row per remote, direction and shard, plus namespace replication", async () => {
    const r = await runCli(["replication", "status"], { admin: { getReplicationStatus: () => status } });
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toBe("Cluster clusterA");
    expect(lines[1]).toMatch(/^REMOTE +DIRECTION +SHARD +MAX TASK ID +ACKED TASK ID +LAG \(TASKS\) +LAG \(MS\) +CONNECTION$/);
    expect(lines[2]).toMatch(/^clusterB +inbound +1 +10 +10 +0 +0 +connected$/);
    expect(lines[3]).toMatch(/^clusterB +inbound +ns +3 +3 +0 +- +connected$/);
    expect(lines[4]).toMatch(/^clusterB +outbound +1 +42 +40 +2 +150 +connected$/);
    // Was: the ns row's LAG (MS) blank, unexplained.
    expect(lines[5]).toBe("LAG (MS) -: not measured for namespace replication (shard ns), whose lag is counted in tasks only");
  });

  test("a remote not heard from lately: its inbound lag is unknown, since when it was last heard", async () => {
    const unheard = create(GetReplicationStatusResponseSchema, {
      ...status,
      remotes: [{ ...status.remotes[0]!, inboundLagUnknown: true, inboundHeardAt: timestampFromDate(new Date(Date.now() - 40_000)) }],
    });
    const r = await runCli(["replication", "status"], { admin: { getReplicationStatus: () => unheard } });
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[2]).toMatch(/^clusterB +inbound +1 +10 +10 +unknown +unknown +connected$/);
    // Namespace replication comes from the same remote: its lag is as unknown.
    expect(lines[3]).toMatch(/^clusterB +inbound +ns +3 +3 +unknown +- +connected$/);
    expect(lines[4]).toMatch(/^clusterB +outbound +1 +42 +40 +2 +150 +connected$/);
    expect(lines[7]).toMatch(/^NOTE: clusterA has heard nothing from clusterB since \S+Z \(40 s ago\): its inbound lag is unknown \(/);
  });

  test("namespace polls failing while history is heard: the ns row alone is unknown, with since when and why", async () => {
    const remote = {
      ...status.remotes[0]!,
      connectionState: "error: unavailable: HTTP 502",
      namespaceLagTasks: 0n,
      namespaceLagUnknown: true,
      namespaceHeardAt: timestampFromDate(new Date(Date.now() - 30_000)),
      namespaceError: "unavailable: HTTP 502",
    };
    const failing = create(GetReplicationStatusResponseSchema, { ...status, remotes: [remote] });
    const r = await runCli(["replication", "status"], { admin: { getReplicationStatus: () => failing } });
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[2]).toMatch(/^clusterB +inbound +1 +10 +10 +0 +0 +error: /);
    expect(lines[3]).toMatch(/^clusterB +inbound +ns +3 +3 +unknown +- +error: /);
    expect(lines[7]).toMatch(/^NOTE: clusterA's namespace replication from clusterB has had no answer since \S+Z \(30 s ago\): unavailable: HTTP 502; its ns lag is unknown \(/);
    const json = JSON.parse((await runCli(["replication", "status", "-o", "json"], { admin: { getReplicationStatus: () => failing } })).stdout);
    expect(json.remotes[0].namespaceLagTasks).toBeNull();
    expect(json.remotes[0].namespaceError).toBe("unavailable: HTTP 502");
    expect(json.remotes[0].inbound[0].lagTasks).toBeUndefined(); // 0, omitted: known, not null
  });

  test("-o json is the protobuf JSON of the response", async () => {
    const r = await runCli(["replication", "status", "-o", "json"], { admin: { getReplicationStatus: () => status } });
    const json = JSON.parse(r.stdout);
    expect(json.clusterName).toBe("clusterA");
    expect(json.remotes[0].outbound[0]).toEqual({ shardId: 1, maxTaskId: "42", ackedTaskId: "40", lagTasks: "2", lagMs: "150" });
  });

  test("-o json: a remote not heard from lately has its inbound lag null, not its last known numbers", async () => {
    const heardAt = timestampFromDate(new Date(Date.now() - 40_000));
    const remote = {
      clusterName: "clusterB",
      connectionState: "connected",
      enableConnection: true,
      inbound: [{ shardId: 1, maxTaskId: 10n, ackedTaskId: 7n, lagTasks: 3n, lagMs: 900n }, { shardId: 2, maxTaskId: 5n, ackedTaskId: 5n }],
      outbound: [{ shardId: 1, maxTaskId: 42n, ackedTaskId: 40n, lagTasks: 2n, lagMs: 150n }],
      namespaceMaxTaskId: 4n,
      namespaceAckedTaskId: 3n,
      namespaceLagTasks: 1n,
    };
    const unheard = create(GetReplicationStatusResponseSchema, { clusterName: "clusterA", remotes: [{ ...remote, inboundLagUnknown: true, inboundHeardAt: heardAt }] });
    const r = await runCli(["replication", "status", "-o", "json"], { admin: { getReplicationStatus: () => unheard } });
    const json = JSON.parse(r.stdout);
    expect(json.remotes[0].inboundLagUnknown).toBe(true);
    // A lag of 0 (omitted) would read as caught up: null, as the 3 last heard.
    expect(json.remotes[0].inbound).toEqual([
      { shardId: 1, maxTaskId: "10", ackedTaskId: "7", lagTasks: null, lagMs: null },
      { shardId: 2, maxTaskId: "5", ackedTaskId: "5", lagTasks: null, lagMs: null },
    ]);
    expect(json.remotes[0].namespaceLagTasks).toBeNull();
    expect(json.remotes[0].namespaceMaxTaskId).toBe("4");
    // The outbound rows are this cluster's own knowledge: as they were.
    expect(json.remotes[0].outbound[0]).toEqual({ shardId: 1, maxTaskId: "42", ackedTaskId: "40", lagTasks: "2", lagMs: "150" });
    // Still protobuf JSON of the response: null reads as unset.
    expect(fromJson(GetReplicationStatusResponseSchema, json).remotes[0]!.inbound[0]!.lagTasks).toBe(0n);
    // A remote heard from lately keeps its numbers.
    const heard = create(GetReplicationStatusResponseSchema, { clusterName: "clusterA", remotes: [remote] });
    const current = JSON.parse((await runCli(["replication", "status", "-o", "json"], { admin: { getReplicationStatus: () => heard } })).stdout);
    expect(current.remotes[0].inbound[0]).toEqual({ shardId: 1, maxTaskId: "10", ackedTaskId: "7", lagTasks: "3", lagMs: "900" });
    expect(current.remotes[0].namespaceLagTasks).toBe("1");
  });

  test("no remotes: says how to connect one; a disabled remote reads disabled", async () => {
    const none = await runCli(["replication", "status"], { admin: { getReplicationStatus: () => ({ clusterName: "clusterA" }) } });
    expect(none.stdout).toBe("Cluster clusterA: no remote clusters (connect one with 'tern operator cluster upsert')\n");
    const off = create(GetReplicationStatusResponseSchema, { clusterName: "clusterA", remotes: [{ clusterName: "clusterB", connectionState: "connected", enableConnection: false }] });
    const r = await runCli(["replication", "status"], { admin: { getReplicationStatus: () => off } });
    expect(r.stdout).toMatch(/^clusterB +inbound +ns +0 +0 +0 +- +disabled$/m);
  });

  test("a remote the replication queue waits for: a NOTE names it, with the tasks kept for it and how to release them; one keeping up has none", async () => {
    const shards = (lag: bigint, lagMs: bigint) => [1, 2, 3].map((shardId) => ({ shardId, maxTaskId: 500n, ackedTaskId: 500n - (shardId === 3 ? 0n : lag), lagTasks: shardId === 3 ? 0n : lag, lagMs: shardId === 3 ? 0n : lagMs }));
    const res = create(GetReplicationStatusResponseSchema, {
      clusterName: "clusterA",
      remotes: [
        { clusterName: "clusterB", connectionState: "connected", enableConnection: false, outbound: shards(400n, 3_600_000n) },
        { clusterName: "clusterC", connectionState: "error: cannot reach cluster clusterC: connection refused", enableConnection: true, outbound: shards(7n, 20_000n) },
        { clusterName: "clusterD", connectionState: "connected", enableConnection: true, outbound: shards(2n, 150n) },
        { clusterName: "clusterE", connectionState: "connected", enableConnection: true, outbound: shards(90n, 75_000n) },
      ],
    });
    const notes = (await runCli(["replication", "status"], { admin: { getReplicationStatus: () => res } })).stdout.split("\n").filter((l) => l.startsWith("NOTE:"));
    // Before: no line; 3 outbound rows per remote said it a shard at a time, and nothing that cleanup waited on clusterB.
    const release = (c: string) =>
      `clusterA keeps those shards' tasks until it acks them. If ${c} is retired, take it out of its namespaces' clusters and remove it ('tern operator cluster remove --name ${c}'): the tasks kept for it alone go at the next cleanup`;
    expect(notes).toEqual([
      `NOTE: clusterB is 800 replication task(s) behind in 2 of 3 of clusterA's shard(s) (its connection is disabled here): ${release("clusterB")}`,
      `NOTE: clusterC is 14 replication task(s) behind in 2 of 3 of clusterA's shard(s) (its connection: error: cannot reach cluster clusterC: connection refused): ${release("clusterC")}`,
      `NOTE: clusterE is 180 replication task(s) behind in 2 of 3 of clusterA's shard(s) (its oldest unacked task is 75 s old): ${release("clusterE")}`,
    ]);
  });
});

describe("namespace failover", () => {
  test("failover --to sends the target and timeout and prints the failover, (graceful), as update prints (forced)", async () => {
    let seen: FailoverNamespaceRequest | undefined;
    const r = await runCli(["operator", "namespace", "failover", "--namespace", "orders", "--to", "clusterB", "--timeout", "30s"], {
      operator: { failoverNamespace: (req) => ((seen = req), { namespace: orders("clusterB", 102n), handoverTaskIds: { 1: 7n } }) },
    });
    expect(r.code).toBe(0);
    expect(seen!.namespace).toBe("orders");
    expect(seen!.targetCluster).toBe("clusterB");
    expect(seen!.timeout?.seconds).toBe(30n);
    // Was: 'Namespace orders is active in clusterB (failover version 102)', with no (graceful) where a forced one says (forced).
    expect(r.stdout).toBe(
      "Failed over namespace orders from clusterA to clusterB (graceful): global; active: clusterB; clusters: clusterA, clusterB; failover version: 102; config version: 0\n",
    );
  });

  test("without --timeout the server's default applies; -o json shows the handover task ids", async () => {
    let seen: FailoverNamespaceRequest | undefined;
    const r = await runCli(["operator", "namespace", "failover", "orders", "--to", "clusterB", "-o", "json"], {
      operator: { failoverNamespace: (req) => ((seen = req), { namespace: orders("clusterB", 102n), handoverTaskIds: { 1: 7n } }) },
    });
    expect(seen!.timeout).toBeUndefined();
    expect(JSON.parse(r.stdout).handoverTaskIds).toEqual({ "1": "7" });
  });

  test("a failover that times out prints one error line and exits 1", async () => {
    const r = await runCli(["operator", "namespace", "failover", "-n", "orders", "--to", "clusterB"], {
      operator: {
        failoverNamespace: () => {
          throw new ConnectError("clusterB did not catch up within 10s\n(shard 1: acked 5 of 7)", Code.DeadlineExceeded);
        },
      },
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe("error: deadline_exceeded: clusterB did not catch up within 10s\n");
  });

  test("--to is required and the timeout must be a duration", async () => {
    const noTarget = await runCli(["operator", "namespace", "failover", "-n", "orders"]);
    expect(noTarget.code).toBe(2);
    expect(noTarget.stderr).toContain("--to is required");
    const badTimeout = await runCli(["operator", "namespace", "failover", "-n", "orders", "--to", "B", "--timeout", "soon"]);
    expect(badTimeout.code).toBe(2);
  });

  test("the failover history lists the latest five, newest first", async () => {
    const many = orders("clusterA", 701n);
    many.failoverHistory = Array.from({ length: 7 }, (_, i) => ({
      ...many.failoverHistory[0]!,
      failoverTime: timestampFromDate(new Date(Date.UTC(2025, 0, 1 + i))),
      failoverVersion: BigInt(100 * i + 1),
    }));
    const r = await runCli(["operator", "namespace", "describe", "orders"], {
      workflow: { describeNamespace: () => ({ namespace: many }) },
    });
    const lines = r.stdout.slice(r.stdout.indexOf("FailoverHistory:")).trimEnd().split("\n");
    expect(lines.slice(1).map((l) => l.trim())).toEqual([
      "2025-01-07T00:00:00.000Z  clusterA → clusterB @601",
      "2025-01-06T00:00:00.000Z  clusterA → clusterB @501",
      "2025-01-05T00:00:00.000Z  clusterA → clusterB @401",
      "2025-01-04T00:00:00.000Z  clusterA → clusterB @301",
      "2025-01-03T00:00:00.000Z  clusterA → clusterB @201",
      "(2 earlier)",
    ]);
  });

  test("describe shows active cluster, version, replication state and the failover history", async () => {
    const r = await runCli(["operator", "namespace", "describe", "orders"], {
      workflow: { describeNamespace: () => ({ namespace: orders("clusterA", 201n) }) },
    });
    expect(r.stdout).toMatch(/^ActiveClusterName: +clusterA$/m);
    expect(r.stdout).toMatch(/^FailoverVersion: +201$/m);
    expect(r.stdout).toMatch(/^ReplicationState: +Normal$/m);
    expect(r.stdout).toContain(
      "FailoverHistory:\n  2025-01-02T03:09:00.000Z  clusterB → clusterA @201\n  2025-01-02T03:04:05.000Z  clusterA → clusterB @102\n",
    );
  });

  test("a forced failover says so, from and to whom; an update that failed nothing over says Updated", async () => {
    // Was: 'Updated namespace orders (...)' either way.
    const failedOver = orders("clusterA", 201n);
    const forced = await runCli(["operator", "namespace", "update", "-n", "orders", "--active-cluster", "clusterA"], {
      workflow: { updateNamespace: () => ({ namespace: failedOver, failedOver: true }) },
    });
    expect([forced.code, forced.stdout]).toEqual([
      0,
      "Failed over namespace orders from clusterB to clusterA (forced): global; active: clusterA; clusters: clusterA, clusterB; failover version: 201; config version: 0\n",
    ]);
    const plain = await runCli(["operator", "namespace", "update", "-n", "orders", "--active-cluster", "clusterA", "--description", "x"], {
      workflow: { updateNamespace: () => ({ namespace: failedOver }) },
    });
    expect(plain.stdout).toBe("Updated namespace orders (global; active: clusterA; clusters: clusterA, clusterB; failover version: 201; config version: 0)\n");
    const json = await runCli(["operator", "namespace", "update", "-n", "orders", "--active-cluster", "clusterA", "-o", "json"], {
      workflow: { updateNamespace: () => ({ namespace: failedOver, failedOver: true }) },
    });
    expect(JSON.parse(json.stdout).failedOver).toBe(true);
  });

  test("--active-cluster naming the cluster active already, alone, says so and that nothing changed (exit 0)", async () => {
    // Was: 'Updated namespace orders (...)', though no failover was made and nothing changed.
    const same = orders("clusterA", 201n);
    const r = await runCli(["operator", "namespace", "update", "-n", "orders", "--active-cluster", "clusterA"], {
      workflow: { updateNamespace: () => ({ namespace: same, failedOver: false }) },
    });
    expect([r.code, r.stdout, r.stderr]).toEqual([
      0,
      "Namespace orders is already active in clusterA: nothing changed (global; active: clusterA; clusters: clusterA, clusterB; failover version: 201; config version: 0)\n",
      "",
    ]);
  });

  test("the failover history says which failovers were forced and which graceful; nothing for one recorded before it was kept", async () => {
    const ns = orders("clusterB", 302n);
    ns.failoverHistory = [
      { ...ns.failoverHistory[0]!, failoverTime: timestampFromDate(new Date("2025-01-03T00:00:00Z")), fromCluster: "clusterA", toCluster: "clusterB", failoverVersion: 302n, forced: true },
      { ...ns.failoverHistory[1]!, forced: false },
      ns.failoverHistory[0]!,
    ];
    const r = await runCli(["operator", "namespace", "describe", "orders"], { workflow: { describeNamespace: () => ({ namespace: ns }) } });
    expect(r.stdout).toContain(
      "FailoverHistory:\n" +
        "  2025-01-03T00:00:00.000Z  clusterA → clusterB @302 (forced)\n" +
        "  2025-01-02T03:09:00.000Z  clusterB → clusterA @201 (graceful)\n" +
        "  2025-01-02T03:04:05.000Z  clusterA → clusterB @102\n",
    );
    const json = JSON.parse((await runCli(["operator", "namespace", "describe", "orders", "-o", "json"], { workflow: { describeNamespace: () => ({ namespace: ns }) } })).stdout);
    expect(json.namespace.failoverHistory.map((f: { forced?: boolean }) => f.forced)).toEqual([true, false, undefined]);
  });

  test("the forced failover (update --active-cluster) still works and help points to both", async () => {
    let active = "";
    const r = await runCli(["operator", "namespace", "update", "-n", "orders", "--active-cluster", "clusterA"], {
      workflow: { updateNamespace: (req) => ((active = req.activeClusterName), { namespace: orders("clusterA", 201n) }) },
    });
    expect(r.code).toBe(0);
    expect(active).toBe("clusterA");
    const help = await runCli(["operator", "namespace", "failover", "--help"]);
    expect(help.stdout).toContain("--to CLUSTER");
    expect(help.stdout).toContain('--timeout DURATION');
    expect(help.stdout).toContain("--active-cluster NAME");
    const status = await runCli(["replication", "status", "--help"]);
    expect(status.stdout).toContain("outbound rows");
  });
});
