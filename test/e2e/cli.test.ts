import { setDefaultTimeout, afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { addr as addressOf, connectAll, eventuallyOn, startClusters } from "../failover/mesh";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const root = fileURLToPath(new URL("../..", import.meta.url));

/** Runs bin/tern (the npm bin: Node launching Bun) as a subprocess. */
async function tern(address: string, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const child = Bun.spawn(["node", "bin/tern", "--address", address, ...args], { cwd: root, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { code, out, err };
}

test("output into a pipe whose reader is gone ends quietly with 0 (tern ... | head)", async () => {
  // `true` exits at once: every write of tern's finds the pipe closed (EPIPE).
  const child = Bun.spawn(["bash", "-c", "set -o pipefail; node bin/tern --help | true"], { cwd: root, stdout: "pipe", stderr: "pipe" });
  const [err, code] = await Promise.all([new Response(child.stderr).text(), child.exited]);
  expect(err).toBe("");
  expect(code).toBe(0);
});

test("errors nobody reads (2>&1 | true) keep their exit code: a usage error is still 2, not the 0 of a reader gone", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tern-cli-epipe-"));
  try {
    // A FIFO whose only reader is closed before tern starts: its first write to stderr fails with EPIPE, every time.
    const script = `mkfifo f && exec 4<>f 6>f && exec 4<&- && node ${join(root, "bin/tern")} nosuch 2>&6`;
    const child = Bun.spawn(["bash", "-c", script], { cwd: dir, stdout: "pipe", stderr: "pipe" });
    const [err, code] = await Promise.all([new Response(child.stderr).text(), child.exited]);
    expect([code, err]).toEqual([2, ""]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.skipIf(!existsSync("/dev/full"))("output that cannot be written (a full disk) is one line on stderr and exit 1, not a stack trace", async () => {
  const full = openSync("/dev/full", "w");
  try {
    const child = Bun.spawn(["node", "bin/tern", "--help"], { cwd: root, stdout: full, stderr: "pipe" });
    const [err, code] = await Promise.all([new Response(child.stderr).text(), child.exited]);
    expect([code, err]).toEqual([1, "error: cannot write standard output: ENOSPC: no space left on device, write\n"]);
  } finally {
    closeSync(full);
  }
});

test("npx bun run cli, the README's same-as-tern command, writes only the CLI's own words on stderr: no `$ bun src/cli/main.ts` line of Bun's", async () => {
  const child = Bun.spawn(["npx", "bun", "run", "cli", "nosuch"], { cwd: root, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  expect([code, out, err]).toEqual([2, "", `error: unknown command "nosuch" for "tern"\n(run 'tern --help' for usage)\n`]);
});

test("TERN_BUN naming no Bun fails, naming it, exit 1: it ran the Bun in node_modules instead, as if named", async () => {
  const missing = join(tmpdir(), `tern-no-bun-${process.pid}`);
  const child = Bun.spawn(["node", "bin/tern", "--version"], { cwd: root, env: { ...process.env, TERN_BUN: missing }, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  expect([code, out, err]).toEqual([1, "", `error: cannot run ${missing} (TERN_BUN): spawn ${missing} ENOENT\n`]);
});

test("an --address that is not tern's Connect port is named as such: an HTTP/2-only port, a server that answers 404", async () => {
  // What the native gRPC port (h2c, HTTP/2 only) answers an HTTP/1.1 request with: a SETTINGS frame, then GOAWAY.
  const h2 = Bun.listen({
    hostname: "127.0.0.1", port: 0,
    socket: { data(sock) { sock.write(new Uint8Array([0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])); sock.end(); } },
  });
  const web = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("nothing here", { status: 404 }) });
  try {
    const grpcPort = await tern(`127.0.0.1:${h2.port}`, "operator", "cluster", "describe");
    expect([grpcPort.code, grpcPort.err.trim()]).toEqual([1, `error: http://127.0.0.1:${h2.port} is not tern's Connect port (its answer is not HTTP/1.1); --address takes services.frontend.rpc.port, not the gRPC port`]);
    const other = await tern(`127.0.0.1:${web.port}`, "operator", "cluster", "describe");
    expect([other.code, other.err.trim()]).toEqual([1, `error: http://127.0.0.1:${web.port} is not tern's Connect port (it answered HTTP 404); --address takes services.frontend.rpc.port, not the gRPC port`]);
  } finally {
    h2.stop(true);
    await web.stop(true);
  }
});

/** openssl in dir: a CA (ca.pem, itself a self-signed certificate), a leaf for localhost it signed, and one that expired in 2020. */
function makeCertificates(dir: string): void {
  const openssl = (...args: string[]) => {
    const run = Bun.spawnSync(["openssl", ...args], { cwd: dir, stdout: "ignore", stderr: "pipe" });
    if (run.exitCode !== 0) throw new Error(`openssl ${args[0]}: ${run.stderr.toString()}`);
  };
  writeFileSync(join(dir, "san.cnf"), "subjectAltName=DNS:localhost\n");
  writeFileSync(join(dir, "index.txt"), "");
  writeFileSync(join(dir, "serial"), "01\n");
  writeFileSync(join(dir, "ca.cnf"), `[ca]\ndefault_ca=c\n[c]\ndatabase=${dir}/index.txt\nnew_certs_dir=${dir}\nserial=${dir}/serial\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n`);
  openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=tern test CA");
  openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost");
  openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "2", "-days", "2", "-extfile", "san.cnf", "-out", "leaf.pem");
  openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in", "leaf.csr", "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", "-extfile", "san.cnf", "-out", "expired.pem");
}

test.skipIf(!Bun.which("openssl"))("an https:// address whose certificate fails (self-signed, an unknown CA, expired, another host) is a connection that failed, naming what is wrong and NODE_EXTRA_CA_CERTS, not Bun's 'unknown: self signed certificate'", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tern-cli-tls-"));
  const servers: ReturnType<typeof Bun.serve>[] = [];
  try {
    makeCertificates(dir);
    const serve = (cert: string, key: string) => {
      const server = Bun.serve({ hostname: "127.0.0.1", port: 0, tls: { cert: Bun.file(join(dir, cert)), key: Bun.file(join(dir, key)) }, fetch: () => new Response("", { status: 404 }) });
      servers.push(server);
      return server.port;
    };
    const [selfSigned, leaf, expired] = [serve("ca.pem", "ca.key"), serve("leaf.pem", "leaf.key"), serve("expired.pem", "leaf.key")];
    const said = async (address: string, env: Record<string, string> = {}) => {
      const child = Bun.spawn(["node", "bin/tern", "--address", address, "operator", "cluster", "describe"], { cwd: root, env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" });
      const [err, code] = await Promise.all([new Response(child.stderr).text(), child.exited]);
      return [code, err.trim()];
    };
    const trust = "name its PEM file in the environment variable NODE_EXTRA_CA_CERTS)";
    expect(await said(`https://localhost:${selfSigned}`)).toEqual([1, `error: cannot reach tern at https://localhost:${selfSigned} (its TLS handshake failed: its certificate is self-signed; to trust it, ${trust}`]);
    expect(await said(`https://localhost:${leaf}`)).toEqual([1, `error: cannot reach tern at https://localhost:${leaf} (its TLS handshake failed: its certificate is signed by a CA this machine does not trust; to trust that CA, ${trust}`]);
    const withCa = { NODE_EXTRA_CA_CERTS: join(dir, "ca.pem") };
    expect(await said(`https://localhost:${expired}`, withCa)).toEqual([1, `error: cannot reach tern at https://localhost:${expired} (its TLS handshake failed: its certificate has expired)`]);
    expect(await said(`https://127.0.0.1:${leaf}`, withCa)).toEqual([1, `error: cannot reach tern at https://127.0.0.1:${leaf} (its TLS handshake failed: its certificate does not name the address's host)`]);
    // The way the message gives works: with the CA trusted, the handshake passes and the answer is the server's own.
    expect(await said(`https://localhost:${leaf}`, withCa)).toEqual([1, `error: https://localhost:${leaf} is not tern's Connect port (it answered HTTP 404); --address takes services.frontend.rpc.port, not the gRPC port`]);
  } finally {
    for (const server of servers) await server.stop(true);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("--input - sends what the CLI's standard input holds, @PATH a file's text (they were sent as JSON text and refused, exit 2)", async () => {
  const bodies: string[] = [];
  const web = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: async (req) => (bodies.push(await req.text()), new Response("", { status: 404 })) });
  const dir = mkdtempSync(join(tmpdir(), "tern-cli-input-"));
  try {
    writeFileSync(join(dir, "in.json"), '{"from":"file"}');
    const args = ["node", "bin/tern", "--address", `127.0.0.1:${web.port}`, "workflow", "signal", "-w", "w", "--name", "go", "--input"];
    const child = Bun.spawn([...args, "-"], { cwd: root, stdin: new TextEncoder().encode('{"from":"stdin"}'), stdout: "pipe", stderr: "pipe" });
    expect([await child.exited, (await new Response(child.stderr).text()).split("\n")[0]]).toEqual([1, `error: http://127.0.0.1:${web.port} is not tern's Connect port (it answered HTTP 404); --address takes services.frontend.rpc.port, not the gRPC port`]);
    const fromFile = Bun.spawn([...args, `@${join(dir, "in.json")}`], { cwd: root, stdout: "pipe", stderr: "pipe" });
    expect(await fromFile.exited).toBe(1);
    expect([bodies.length, bodies[0]?.includes('{"from":"stdin"}'), bodies[1]?.includes('{"from":"file"}')]).toEqual([2, true, true]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await web.stop(true);
  }
});

test("a server that takes the connection and never answers (a frozen process) ends at the deadline, named, exit 1", async () => {
  const frozen = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  try {
    const began = Date.now();
    const r = await tern(`127.0.0.1:${frozen.port}`, "--rpc-timeout", "500ms", "operator", "cluster", "describe");
    expect([r.code, r.err.trim()]).toEqual([1, `error: tern at http://127.0.0.1:${frozen.port} did not answer within 500ms (the call's deadline; --rpc-timeout sets it, 0 for none)`]);
    // A graceful failover's deadline is its --timeout and the call's: 1.5 s.
    const failover = await tern(`127.0.0.1:${frozen.port}`, "--rpc-timeout", "500ms", "operator", "namespace", "failover", "-n", "orders", "--to", "clusterB", "--timeout", "1s");
    expect([failover.code, failover.err.trim()]).toEqual([1, `error: tern at http://127.0.0.1:${frozen.port} did not answer within 1s500ms (the call's deadline; --rpc-timeout sets it, 0 for none)`]);
    expect(Date.now() - began).toBeLessThan(15_000);
  } finally {
    frozen.stop(true);
  }
});

for (const store of await testStores()) {
  describe(`tern CLI against a real server on ${store}`, () => {
    let cluster: TestCluster;
    let addr: string;
    beforeAll(async () => {
      cluster = await startTestCluster({ store, name: "clusterA" });
      addr = cluster.url.replace("http://", "");
    });
    afterAll(() => cluster.destroy());

    const ok = async (...args: string[]) => {
      const r = await tern(addr, ...args);
      if (r.code !== 0) throw new Error(`tern ${args.join(" ")} exited ${r.code}: ${r.err}`);
      return r.out;
    };

    test("the README tour: create a namespace, start, signal, show and list", async () => {
      await ok("operator", "namespace", "create", "--namespace", "orders", "--retention", "48h", "--description", "Orders");
      const ns = JSON.parse(await ok("operator", "namespace", "describe", "-n", "orders", "-o", "json"));
      expect(ns.namespace.namespaceInfo.name).toBe("orders");
      expect(ns.namespace.config.workflowExecutionRetentionTtl).toBe("172800s");
      const started = JSON.parse(await ok("workflow", "start", "-n", "orders", "-w", "order-1", "--type", "OrderFlow", "--input", '{"sku":"A1"}', "-o", "json"));
      expect(started.runId).toMatch(/^[0-9A-Z]{26}$/);
      await ok("workflow", "signal", "-n", "orders", "-w", "order-1", "--name", "paid", "--input", '{"amount":42}');
      const shown = JSON.parse(await ok("workflow", "show", "-n", "orders", "-w", "order-1", "-o", "json"));
      expect(shown.events.map((e: { eventType: string }) => e.eventType)).toEqual([
        "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED",
        "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED",
      ]);
      const table = await ok("workflow", "show", "-n", "orders", "-w", "order-1");
      expect(table).toContain("WorkflowExecutionSignaled");
      expect(table).toContain('{"amount":42}');
      const list = JSON.parse(await ok("workflow", "list", "-n", "orders", "-o", "json"));
      expect(list.executions.map((e: { execution: { workflowId: string } }) => e.execution.workflowId)).toEqual(["order-1"]);
      const describe = JSON.parse(await ok("workflow", "describe", "-n", "orders", "-w", "order-1", "-o", "json"));
      expect(describe.workflowExecutionInfo.status).toBe("WORKFLOW_EXECUTION_STATUS_RUNNING");
      // No --reason: the server takes an empty one, as Temporal's does.
      await ok("workflow", "terminate", "-n", "orders", "-w", "order-1");
      expect(await ok("workflow", "list", "-n", "orders", "--status", "terminated")).toContain("order-1");
    });

    test("show --follow streams new events and ends when the run closes", async () => {
      await ok("operator", "namespace", "create", "-n", "follow");
      await ok("workflow", "start", "-n", "follow", "-w", "f", "--type", "T");
      const child = Bun.spawn(["node", "bin/tern", "--address", addr, "workflow", "show", "-n", "follow", "-w", "f", "--follow", "-o", "json"], {
        cwd: root, stdout: "pipe", stderr: "pipe",
      });
      const reader = child.stdout.getReader();
      const decoder = new TextDecoder();
      let out = "";
      const readOn = async (until: () => boolean) => {
        while (!until()) {
          const { value, done } = await reader.read();
          if (done) return;
          out += decoder.decode(value, { stream: true });
        }
      };
      // Its first line (the history so far) is out: the follower runs, and what comes next it streams.
      await readOn(() => out.includes("\n"));
      expect(out.split("\n")).toHaveLength(2);
      await ok("workflow", "signal", "-n", "follow", "-w", "f", "--name", "late");
      await ok("workflow", "complete", "-n", "follow", "-w", "f", "--result", '"fine"');
      await readOn(() => false);
      const code = await child.exited;
      const lines = out.trim().split("\n").map((l) => JSON.parse(l).eventType);
      expect(code).toBe(0);
      expect(lines).toEqual([
        "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED",
        "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED",
        "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED",
      ]);
    });

    /**
     * `workflow show --follow` of run s in a new namespace, its start and each of its signals with a
     * 1.5 MB input: printed base64 in JSON, far more than a pipe holds.
     */
    const followBigRun = async (namespace: string, signals: number) => {
      await ok("operator", "namespace", "create", "-n", namespace);
      const dir = mkdtempSync(join(tmpdir(), "tern-cli-big-"));
      try {
        const big = join(dir, "big.json");
        writeFileSync(big, JSON.stringify({ big: "x".repeat(1_500_000) }));
        await ok("workflow", "start", "-n", namespace, "-w", "s", "--type", "T", "--input", `@${big}`);
        for (let i = 0; i < signals; i++) await ok("workflow", "signal", "-n", namespace, "-w", "s", "--name", "more", "--input", `@${big}`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      // Bun itself, not bin/tern: Ctrl-C reaches the whole process group, and the launcher lets its child take it.
      return Bun.spawn([process.execPath, "src/cli/main.ts", "--address", addr, "workflow", "show", "-n", namespace, "-w", "s", "--follow", "-o", "json"], {
        cwd: root, stdout: "pipe", stderr: "pipe",
      });
    };

    test("Ctrl-C during show --follow exits 130 once a slow reader has all it printed (process.exit dropped what the pipe had no room for)", async () => {
      const child = await followBigRun("slow", 1);
      const reader = child.stdout.getReader();
      const chunks: Uint8Array[] = [];
      // Its first bytes are out: the history's one page is printed, and what the pipe has no room for waits in the process.
      chunks.push((await reader.read()).value!);
      child.kill("SIGINT");
      for (let r = await reader.read(); !r.done; r = await reader.read()) chunks.push(r.value);
      const lines = Buffer.concat(chunks).toString().trim().split("\n");
      expect([await child.exited, await new Response(child.stderr).text()]).toEqual([130, ""]);
      expect(lines.map((l) => JSON.parse(l).eventType)).toEqual(["EVENT_TYPE_WORKFLOW_EXECUTION_STARTED", "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"]);
    });

    test("Ctrl-C with a pipe reader alive but never reading exits 130 within a few seconds, not at a second Ctrl-C", async () => {
      const child = await followBigRun("stuck", 0);
      try {
        // The first bytes are out, the rest (2 MB of base64) waits for a pipe nobody reads again.
        const reader = child.stdout.getReader();
        expect((await reader.read()).done).toBe(false);
        const interrupted = performance.now();
        child.kill("SIGINT");
        // Before: it waited for the reader until the test's timeout.
        expect([await child.exited, await new Response(child.stderr).text()]).toEqual([130, ""]);
        expect(performance.now() - interrupted).toBeGreaterThanOrEqual(2_900);
      } finally {
        child.kill("SIGKILL");
      }
    });

    test("errors print one line and exit non-zero", async () => {
      const missing = await tern(addr, "workflow", "describe", "-n", "nope", "-w", "x");
      expect(missing.code).toBe(1);
      expect(missing.err.trim()).toBe("error: not_found: namespace nope not found");
      const bad = await tern(addr, "workflow", "start", "-n", "orders", "-w", "x", "--type", "T", "--input", "{nope");
      expect(bad.code).toBe(2); // a usage error: the line, then a pointer to --help
      expect(bad.err.split("\n")[0]).toStartWith("error: --input is not valid JSON");
      const down = await tern("127.0.0.1:1", "operator", "cluster", "describe");
      expect(down.code).toBe(1);
      expect(down.err).toContain("cannot reach tern at http://127.0.0.1:1");
    });

    test("cluster describe and list", async () => {
      const d = JSON.parse(await ok("operator", "cluster", "describe", "-o", "json"));
      expect(d.cluster.clusterName).toBe("clusterA");
      expect(await ok("operator", "cluster", "list")).toContain("clusterA");
    });

    test("an --address with a path works behind a proxy that strips it; sent straight to tern, the answer names the path, not the tern version", async () => {
      const proxy = Bun.serve({
        hostname: "127.0.0.1", port: 0,
        fetch: (req) => {
          const url = new URL(req.url);
          if (!url.pathname.startsWith("/tern/")) return new Response("no such route", { status: 404 });
          return fetch(`${cluster.url}${url.pathname.slice("/tern".length)}`, { method: req.method, headers: req.headers, body: req.body });
        },
      });
      try {
        const proxied = await tern(`http://127.0.0.1:${proxy.port}/tern/`, "operator", "cluster", "describe", "-o", "json");
        expect([proxied.code, JSON.parse(proxied.out).cluster.clusterName]).toEqual([0, "clusterA"]);
        const straight = await tern(`${addr}/foo`, "operator", "cluster", "describe");
        expect([straight.code, straight.err.trim()]).toEqual([1, "error: unimplemented: no procedure at /foo/tern.operator.v1.OperatorService/DescribeCluster: tern serves its procedures at the root of its address (/tern.operator.v1.OperatorService/DescribeCluster), not under /foo; a path in an address is for a proxy in front of tern that strips it"]);
      } finally {
        await proxy.stop(true);
      }
    });
  });
}

for (const store of await testStores()) {
  describe(`tern CLI writing through a passive cluster whose active cluster is down, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    beforeAll(async () => {
      [a, b] = await startClusters(store, [{}, { extraYaml: "dcRedirectionPolicy: { policy: selected-apis-forwarding }" }]);
      await connectAll([a, b]);
      await a.client(WorkflowService).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
      await eventuallyOn(b, "orders", () => {});
      await a.stop();
    });
    afterAll(() => Promise.all([a.destroy(), b.destroy()]));

    test("the refusal names the write's request id, the CLI's own UUID, as the README shows it", async () => {
      const r = await tern(addressOf(b), "workflow", "signal", "-n", "orders", "-w", "order-1", "--name", "paid");
      const refusal = /^error: unavailable: cannot reach cluster clusterA: connection refused \(request id ([^)]+)\); retry with the same request id\n$/;
      expect(r.code).toBe(1);
      expect(r.err).toMatch(refusal);
      expect(refusal.exec(r.err)![1]).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      // The README's examples of a forwarded write's refusal show an id of that form (they showed a ULID, 01J...).
      const readme = (await Bun.file(`${root}/README.md`).text()).replace(/\s+/g, " ");
      const shown = [...readme.matchAll(/\(request id ([^)]+)\); (?:it may still be applied there: )?retry with the same request id/g)].map((m) => m[1]!);
      expect(shown.length).toBeGreaterThan(0);
      for (const id of shown) expect(id).toMatch(/^[0-9a-f]{8}-/);
    });
  });
}
