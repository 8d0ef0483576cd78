import { describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { UpdateNamespaceRequest } from "../../src/gen/tern/workflow/v1/namespace_pb";
import {
  NamespaceDescriptionSchema,
  type RegisterNamespaceRequest,
} from "../../src/gen/tern/workflow/v1/namespace_pb";
import { runCli } from "./harness";

function ns(name: string, failoverVersion = 1n) {
  return create(NamespaceDescriptionSchema, {
    namespaceInfo: { name, id: `id-${name}`, state: 1 },
    isGlobalNamespace: true,
    failoverVersion,
    replicationConfig: { activeClusterName: "clusterA", clusters: ["clusterA", "clusterB"] },
  });
}

describe("operator namespace", () => {
  test("create --global sends clusters, active cluster, retention and data", async () => {
    let seen: RegisterNamespaceRequest | undefined;
    const r = await runCli(
      ["operator", "namespace", "create", "-n", "orders", "--global", "--cluster", "clusterA", "--cluster=clusterB",
        "--active-cluster", "clusterA", "--retention", "3d", "--data", "team=payments", "--description", "Orders"],
      { workflow: { registerNamespace: (req) => ((seen = req), { namespace: ns("orders") }) } },
    );
    expect(r.code).toBe(0);
    expect(seen!.namespace).toBe("orders");
    expect(seen!.isGlobalNamespace).toBe(true);
    expect(seen!.clusters).toEqual(["clusterA", "clusterB"]);
    expect(seen!.activeClusterName).toBe("clusterA");
    expect(seen!.workflowExecutionRetentionPeriod?.seconds).toBe(259_200n);
    expect(seen!.data).toEqual({ team: "payments" });
    expect(seen!.description).toBe("Orders");
    expect(r.stdout).toContain("Registered namespace orders (global; active: clusterA");
  });

  test("--cluster without --global is a usage error", async () => {
    const r = await runCli(["operator", "namespace", "create", "orders", "--cluster", "A"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--cluster and --active-cluster need --global");
  });

  test("describe takes the namespace as a positional and prints key: value lines", async () => {
    let asked = "";
    const r = await runCli(["operator", "namespace", "describe", "orders"], {
      workflow: { describeNamespace: (req) => ((asked = req.namespace), { namespace: ns("orders", 12n) }) },
    });
    expect(r.code).toBe(0);
    expect(asked).toBe("orders");
    expect(r.stdout).toMatch(/^Name: +orders$/m);
    expect(r.stdout).toMatch(/^FailoverVersion: +12$/m);
    expect(r.stdout).toMatch(/^Clusters: +clusterA, clusterB$/m);
  });

  test("list pages through every token and -o json merges the pages", async () => {
    const tokens: string[] = [];
    const pages = [["a", "b"], ["c"], ["d"]];
    const r = await runCli(["-o", "json", "operator", "namespace", "list"], {
      workflow: {
        listNamespaces(req) {
          const i = req.nextPageToken.length === 0 ? 0 : req.nextPageToken[0]!;
          tokens.push(String(i));
          const next = i + 1 < pages.length ? new Uint8Array([i + 1]) : new Uint8Array(0);
          return { namespaces: pages[i]!.map((n) => ns(n)), nextPageToken: next };
        },
      },
    });
    expect(r.code).toBe(0);
    expect(tokens).toEqual(["0", "1", "2"]);
    const json = JSON.parse(r.stdout);
    expect(Object.keys(json)).toEqual(["namespaces"]);
    expect(json.namespaces.map((n: { namespaceInfo: { name: string } }) => n.namespaceInfo.name)).toEqual(["a", "b", "c", "d"]);
  });

  test("list table has the documented columns", async () => {
    const r = await runCli(["operator", "namespace", "list"], {
      workflow: { listNamespaces: () => ({ namespaces: [ns("orders")] }) },
    });
    expect(r.stdout.split("\n")[0]).toBe("NAME    ID         STATE       GLOBAL  ACTIVE    CLUSTERS           FAILOVER VERSION");
    expect(r.stdout.split("\n")[1]).toMatch(/^orders +id-orders +Registered +true +clusterA +clusterA,clusterB +1$/);
  });

  test("GLOBAL reads true or false as describe, -o json and the cluster list do (was yes or no)", async () => {
    const local = create(NamespaceDescriptionSchema, { namespaceInfo: { name: "scratch", id: "id-scratch", state: 1 } });
    const fake = { listNamespaces: () => ({ namespaces: [ns("orders"), local] }), describeNamespace: () => ({ namespace: local }) };
    const table = await runCli(["operator", "namespace", "list"], { workflow: fake });
    expect(table.stdout.split("\n").slice(1, 3).map((l) => l.split(/ +/)[3])).toEqual(["true", "false"]);
    const json = JSON.parse((await runCli(["-o", "json", "operator", "namespace", "list"], { workflow: fake })).stdout);
    expect(json.namespaces.map((n: { isGlobalNamespace?: boolean }) => n.isGlobalNamespace ?? false)).toEqual([true, false]);
    const described = await runCli(["operator", "namespace", "describe", "scratch"], { workflow: fake });
    expect(described.stdout).toMatch(/^IsGlobalNamespace: +false$/m);
  });

  test("update leaves unset optional fields unset and fails over with --active-cluster", async () => {
    let seen: UpdateNamespaceRequest | undefined;
    const r = await runCli(["operator", "namespace", "update", "-n", "orders", "--active-cluster", "clusterB"], {
      workflow: { updateNamespace: (req) => ((seen = req), { namespace: ns("orders", 2n) }) },
    });
    expect(r.code).toBe(0);
    expect(seen!.activeClusterName).toBe("clusterB");
    expect(seen!.description).toBeUndefined();
    expect(seen!.ownerEmail).toBeUndefined();
    expect(seen!.workflowExecutionRetentionPeriod).toBeUndefined();
    expect(r.stdout).toContain("failover version: 2");
  });

  test("update with no flag that changes anything is a usage error naming those flags, before calling the server", async () => {
    let called = false;
    const fake = { updateNamespace: () => ((called = true), { namespace: ns("orders") }) };
    for (const argv of [["-n", "orders"], ["orders", "--promote-global=false", "--active-cluster", ""]]) {
      const r = await runCli(["operator", "namespace", "update", ...argv], { workflow: fake });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(
        "error: nothing to update: give at least one of --description, --email, --retention, --data, --cluster, --active-cluster, --promote-global",
      );
      expect(r.stdout).toBe("");
    }
    expect(called).toBe(false);
    // An empty description or a removed data key is a change.
    for (const argv of [["--description", ""], ["--data", "team="]]) {
      expect((await runCli(["operator", "namespace", "update", "orders", ...argv], { workflow: fake })).code).toBe(0);
    }
    expect(called).toBe(true);
  });

  test("delete without --yes and without a terminal refuses before calling the server", async () => {
    let called = false;
    const r = await runCli(["operator", "namespace", "delete", "-n", "orders"], {
      operator: { deleteNamespace: () => ((called = true), {}) },
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("pass --yes");
    expect(called).toBe(false);
  });

  test("delete asks on a terminal and needs the name typed back", async () => {
    const fake = { deleteNamespace: () => ({ deletedNamespace: "orders", deletedExecutions: 3n }) };
    const wrong = await runCli(["operator", "namespace", "delete", "orders"], { operator: fake, interactive: true, answer: "nope" });
    expect(wrong.code).toBe(1);
    const right = await runCli(["operator", "namespace", "delete", "orders"], { operator: fake, interactive: true, answer: "orders\n" });
    expect(right.code).toBe(0);
    expect(right.stdout).toBe("Deleted namespace orders (3 workflow executions)\n");
  });

  test("a ConnectError prints code and message on one line, exit 1", async () => {
    const r = await runCli(["operator", "namespace", "describe", "-n", "orders"], {
      workflow: {
        describeNamespace: () => {
          throw new ConnectError("namespace orders not found", Code.NotFound);
        },
      },
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe("error: not_found: namespace orders not found\n");
    expect(r.stdout).toBe("");
  });
});

describe("operator namespace failover, asked of a cluster that has not heard of the switch", () => {
  const switched = create(NamespaceDescriptionSchema, {
    namespaceInfo: { name: "orders", id: "id-orders", state: 1 },
    isGlobalNamespace: true,
    failoverVersion: 102n,
    replicationConfig: { activeClusterName: "clusterB", clusters: ["clusterA", "clusterB"] },
  });
  const argv = ["--address", "http://b:7233", "operator", "namespace", "failover", "-n", "orders", "--to", "clusterB"];
  const graceful = "Failed over namespace orders to clusterB (graceful): global; active: clusterB; clusters: clusterA, clusterB; failover version: 102; config version: 0\n";

  test("prints a NOTE when the cluster asked still sees the old active after the answer", async () => {
    const r = await runCli(argv, {
      operator: { failoverNamespace: () => ({ namespace: switched }) },
      workflow: { describeNamespace: () => ({ namespace: ns("orders", 2n) }) },
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(graceful);
    expect(r.stderr).toBe(
      "NOTE: the cluster at http://b:7233 still sees orders active in clusterA: it has not heard of the switch yet " +
        "(namespace replication brings it; if this lasts, check its link to clusterA), and writes sent to it follow that view until it hears.\n",
    );
  });

  test("prints that the target has not confirmed the switch when the server says so, not the view NOTE", async () => {
    const r = await runCli(argv, {
      operator: { failoverNamespace: () => ({ namespace: switched, unconfirmed: "clusterB has acked namespace task 4 of 5 (the switch)" }) },
      workflow: { describeNamespace: () => ({ namespace: ns("orders", 2n) }) },
    });
    expect([r.code, r.stdout]).toEqual([0, graceful]);
    expect(r.stderr).toBe(
      "NOTE: switched on the cluster that was active, but not yet confirmed by clusterB (clusterB has acked namespace task 4 of 5 (the switch)): clusterB may still take the switch, " +
        "or refuse it if a failover made elsewhere reached it first; 'tern operator namespace describe orders' on clusterB says where orders is active.\n",
    );
  });

  test("prints the target's refusal of the switch as the error", async () => {
    const refused = "graceful failover of namespace orders to clusterB: the switch (version 102) was made on clusterA, but clusterB refused the switch because a failover made elsewhere reached it first; orders is active in clusterC at version 3 now (clusterA takes that from clusterB once it hears it)";
    const r = await runCli(argv, { operator: { failoverNamespace: () => { throw new ConnectError(refused, Code.FailedPrecondition); } } });
    expect([r.code, r.stdout, r.stderr]).toEqual([1, "", `error: failed_precondition: ${refused}\n`]);
  });

  test("prints none once it has heard, and none when the describe fails", async () => {
    const heard = await runCli(argv, {
      operator: { failoverNamespace: () => ({ namespace: switched }) },
      workflow: { describeNamespace: () => ({ namespace: switched }) },
    });
    expect([heard.code, heard.stderr]).toEqual([0, ""]);
    const failed = await runCli(argv, { operator: { failoverNamespace: () => ({ namespace: switched }) } });
    expect([failed.code, failed.stdout, failed.stderr]).toEqual([0, graceful, ""]);
  });
});

describe("operator namespace failover whose server stops answering while it runs", () => {
  const argv = ["--address", "http://a:7233", "operator", "namespace", "failover", "-n", "orders", "--to", "clusterB"];
  /** connect-web's error for a fetch that failed with code (Bun's and Node's errno names). */
  const fetchFailed = (code: string) => new ConnectError("fetch failed", Code.Unknown, undefined, undefined, Object.assign(new TypeError("fetch failed"), { code }));

  // A server killed during the handover: the failover may have switched before it died (seen
  // killing the active 100 ms past its handover point), yet "cannot reach tern" read as nothing done.
  test("a connection cut mid-call says the outcome is unknown and where to look", async () => {
    const r = await runCli(argv, { callsFail: fetchFailed("ECONNRESET") });
    expect([r.code, r.stdout]).toEqual([1, ""]);
    expect(r.stderr).toBe(
      "error: the connection to tern at http://a:7233 was lost during the failover (connection reset): whether orders switched to clusterB is unknown; " +
        "'tern operator namespace describe orders' on a running cluster of the namespace says where it is active " +
        "(a HANDOVER left by a server that stopped is put back to NORMAL when it starts again)\n",
    );
  });

  test("a refused connection (no failover started) is still only 'cannot reach'", async () => {
    const r = await runCli(argv, { callsFail: fetchFailed("ECONNREFUSED") });
    expect([r.code, r.stderr]).toEqual([1, "error: cannot reach tern at http://a:7233 (connection refused)\n"]);
  });
});
