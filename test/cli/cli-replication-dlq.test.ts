import { describe, expect, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import type { ListReplicationDlqRequest, MergeReplicationDlqRequest, PurgeReplicationDlqRequest } from "../../src/gen/tern/admin/v1/service_pb";
import { LEFT_FOR_NEXT_MERGE } from "../../replication/dlq-reasons";
import { runCli } from "./harness";

const entry = {
  sourceCluster: "clusterA", shardId: 2, taskId: 17n, namespaceId: "ns-1", workflowId: "bad", runId: "run-1",
  firstEventId: 3n, nextEventId: 5n, version: 1n, attempts: 5, lastError: "history diverges at event 3",
};

describe("replication dlq", () => {
  test("list pages through the DLQ with the filter and prints one row per entry", async () => {
    const seen: ListReplicationDlqRequest[] = [];
    const r = await runCli(["replication", "dlq", "list", "--source-cluster", "clusterA", "--shard", "2"], {
      admin: {
        listReplicationDlq: (req) => {
          seen.push(req);
          return req.nextPageToken.length ? { entries: [{ ...entry, taskId: 18n, attempts: 0 }] } : { entries: [entry], nextPageToken: new Uint8Array([1]) };
        },
      },
    });
    expect(r.code).toBe(0);
    expect(seen.map((s) => [s.sourceCluster, s.shardId])).toEqual([["clusterA", 2], ["clusterA", 2]]);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^SOURCE +SHARD +TASK ID +WORKFLOW ID +RUN ID +EVENTS +ATTEMPTS +CREATED +LAST ERROR$/);
    expect(lines[1]).toMatch(/^clusterA +2 +17 +bad +run-1 +\[3, 5\) +5 +history diverges at event 3$/);
    expect(lines).toHaveLength(3);
    const empty = await runCli(["replication", "dlq", "list"], { admin: { listReplicationDlq: () => ({}) } });
    expect(empty.stdout).toBe("The replication DLQ is empty\n");
  });

  test("a --shard past int32 is a usage error naming the flag, not an internal encoding error", async () => {
    const r = await runCli(["replication", "dlq", "list", "--shard", "99999999999"], { admin: { listReplicationDlq: () => ({}) } });
    expect(r.code).toBe(2);
    expect(r.stderr.split("\n")[0]).toBe('error: --shard must be at most 2147483647, got "99999999999"');
  });

  test("merge reports what still fails and exits 1; a clean merge exits 0", async () => {
    let seen: MergeReplicationDlqRequest | undefined;
    const r = await runCli(["replication", "dlq", "merge", "--shard", "2"], {
      admin: { mergeReplicationDlq: (req) => ((seen = req), { merged: 3n, failed: [entry] }) },
    });
    expect(seen!.shardId).toBe(2);
    expect(r.code).toBe(1);
    expect(r.stdout).toStartWith("Merged 3 DLQ entries; 1 still fail\n");
    const one = await runCli(["replication", "dlq", "merge"], { admin: { mergeReplicationDlq: () => ({ merged: 1n }) } });
    expect([one.code, one.stdout]).toEqual([0, "Merged 1 DLQ entry; 0 still fail\n"]);
    const ok = await runCli(["replication", "dlq", "merge", "-o", "json"], { admin: { mergeReplicationDlq: () => ({ merged: 2n }) } });
    expect([ok.code, JSON.parse(ok.stdout)]).toEqual([0, { merged: "2" }]);
  });

  test("a merge that leaves entries that came after its last listing says they remain, not fail, and to run merge again", async () => {
    const late = { ...entry, firstEventId: 5n, nextEventId: 6n, taskId: 19n, attempts: 0, lastError: LEFT_FOR_NEXT_MERGE };
    const r = await runCli(["replication", "dlq", "merge"], { admin: { mergeReplicationDlq: () => ({ merged: 4n, failed: [entry, late, { ...late, taskId: 20n }] }) } });
    expect(r.code).toBe(1);
    // Before: "Merged 4 DLQ entries; 3 still fail", the entries left counted as failures, "merge again" only at the end of their rows.
    expect(r.stdout.split("\n")[0]).toBe(
      "Merged 4 DLQ entries; 1 still fail; 2 DLQ entries left in the DLQ, not merged (they reached it after this merge's last listing, " +
        "their runs' tasks still coming; those runs stay held): run 'tern replication dlq merge' again",
    );
    expect(r.stdout.trimEnd().split("\n")).toHaveLength(5);
  });

  // A server killed mid-merge: entries merged before it died stay merged, yet "cannot reach tern" read as nothing done.
  test("a merge whose connection is cut says what merged stays merged and that running it again goes on", async () => {
    const fetchFailed = (code: string) => new ConnectError("fetch failed", Code.Unknown, undefined, undefined, Object.assign(new TypeError("fetch failed"), { code }));
    const cut = await runCli(["--address", "http://b:8233", "replication", "dlq", "merge"], { callsFail: fetchFailed("ECONNRESET") });
    expect([cut.code, cut.stdout]).toEqual([1, ""]);
    expect(cut.stderr).toBe(
      "error: the connection to tern at http://b:8233 was lost during the DLQ merge (connection reset): entries merged so far stay merged " +
        "(each leaves the DLQ in the transaction that applies it); run 'tern replication dlq merge' again once tern is back to merge the rest " +
        "('tern replication dlq list' shows what is left)\n",
    );
    const refused = await runCli(["--address", "http://b:8233", "replication", "dlq", "merge"], { callsFail: fetchFailed("ECONNREFUSED") });
    expect([refused.code, refused.stderr]).toEqual([1, "error: cannot reach tern at http://b:8233 (connection refused)\n"]);
  });

  test("purge needs --yes when not a TTY, asks a person, and sends the filter", async () => {
    let calls: PurgeReplicationDlqRequest[] = [];
    const admin = { purgeReplicationDlq: (req: PurgeReplicationDlqRequest) => (calls.push(req), { purged: 4n }) };
    const refused = await runCli(["replication", "dlq", "purge"], { admin });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain("refusing to purge the replication DLQ without confirmation: pass --yes");
    expect(calls).toEqual([]);
    const asked = await runCli(["replication", "dlq", "purge", "--source-cluster", "clusterA"], { admin, interactive: true, answer: "purge" });
    expect([asked.code, asked.stdout]).toEqual([0, "Purged 4 DLQ entries\n"]);
    expect(calls.map((c) => c.sourceCluster)).toEqual(["clusterA"]);
    calls = [];
    const yes = await runCli(["replication", "dlq", "purge", "--yes"], { admin: { purgeReplicationDlq: (req: PurgeReplicationDlqRequest) => (calls.push(req), { purged: 1n }) } });
    expect([yes.code, yes.stdout]).toEqual([0, "Purged 1 DLQ entry\n"]);
    expect(calls).toHaveLength(1);
  });
});

describe("replication verify", () => {
  const same = { clusterName: "clusterA", remoteCluster: "clusterB", localExecutions: 2n, remoteExecutions: 2n };
  test("identical histories exit 0; any difference exits 1 with one row each", async () => {
    const ok = await runCli(["replication", "verify", "-n", "orders", "--cluster", "clusterB"], { admin: { verifyReplication: () => same } });
    expect([ok.code, ok.stdout]).toEqual([0, "clusterA: 2 executions, clusterB: 2 executions; histories are identical\n"]);
    const c = (n: bigint, sum: string) => ({ workflowId: "w", runId: "r", eventCount: n, checksum: sum });
    const bad = await runCli(["replication", "verify", "-n", "orders", "--cluster", "clusterB"], {
      admin: {
        verifyReplication: () => ({
          ...same,
          missing: [{ workflowId: "gone", runId: "r1", local: c(3n, "aaaaaaaaaaaaaaaa") }],
          diverging: [{ workflowId: "w", runId: "r", local: c(3n, "abcdef0123456789"), remote: c(1n, "0123456789abcdef") }],
        }),
      },
    });
    expect(bad.code).toBe(1);
    const lines = bad.stdout.trimEnd().split("\n");
    expect(lines[0]).toBe("clusterA: 2 executions, clusterB: 2 executions; 1 missing, 0 extra, 1 diverging");
    expect(lines[2]).toMatch(/^missing +gone +r1 +3 events aaaaaaaaaaaa +absent$/);
    expect(lines[3]).toMatch(/^diverging +w +r +3 events abcdef012345 +1 event 0123456789ab$/);
  });

  test("--namespace and --cluster are required", async () => {
    const r = await runCli(["replication", "verify", "-n", "orders"], {});
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--cluster is required");
  });
});

describe("replication status", () => {
  test("the last line counts DLQ entries per source", async () => {
    const r = await runCli(["replication", "status"], {
      admin: { getReplicationStatus: () => ({ clusterName: "clusterB", remotes: [{ clusterName: "clusterA", enableConnection: true, connectionState: "connected", dlqSize: 3n }] }) },
    });
    expect(r.stdout.trimEnd().split("\n").at(-1)).toBe("DLQ (tasks per source): clusterA 3");
  });
});
