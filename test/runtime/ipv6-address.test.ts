/**
 * A cluster bound to an IPv6 address with no rpcAddress of its own records bindOnIP:port as its
 * address, which peers are given and `operator cluster describe` shows: written as an address is,
 * with the IPv6 address in brackets. A real server process on ::1.
 */
import { afterAll, expect, test } from "bun:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { eventually } from "../support/eventually";
import { testConfigYaml } from "../support/server";
import { repoRoot } from "./server-process";

const dir = mkdtempSync(join(tmpdir(), "tern-ipv6-address-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A port free on ::1 now (the server is then told to use it: the default address names the configured port). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => (server.once("error", reject), server.listen(0, "::1", () => resolve())));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

test("TestTheDefaultAddressOfAClusterBoundToIPv6IsBracketed, in the start log and as described", async () => {
  const port = await freePort();
  const yaml = testConfigYaml({ store: "pglite", dataLocation: join(dir, "db") });
  const [rpcAddress, rpc] = ['rpcAddress: "127.0.0.1:0"', "rpc: { bindOnIP: 127.0.0.1, port: 0 }"];
  expect([yaml.includes(rpcAddress), yaml.includes(rpc)]).toEqual([true, true]);
  const path = join(dir, "tern.yaml");
  writeFileSync(path, yaml.replace(rpcAddress, 'rpcAddress: ""').replace(rpc, `rpc: { bindOnIP: "::1", port: ${port} }`));
  const child = Bun.spawn([process.execPath, "src/main.ts", "--config", path], { cwd: repoRoot, env: { ...process.env, TERN_LOG_LEVEL: "info", NO_COLOR: "1" }, stdout: "pipe", stderr: "pipe" });
  let output = "";
  for (const stream of [child.stdout, child.stderr]) {
    const decoder = new TextDecoder();
    void stream.pipeTo(new WritableStream({ write: (chunk) => void (output += decoder.decode(chunk, { stream: true })) }));
  }
  try {
    const started = await eventually(() => {
      if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}: ${output}`);
      const line = output.split("\n").find((l) => l.includes(`"msg":"tern server started"`));
      if (!line) throw new Error(`no started line yet: ${output}`);
      return JSON.parse(line) as { address: string };
    }, { timeout: 30_000 });
    // Was "::1:PORT", which reads as the IPv6 address ::1:PORT with no port.
    expect(started.address).toBe(`[::1]:${port}`);
    const operator = createClient(OperatorService, createConnectTransport({ baseUrl: `http://[::1]:${port}` }));
    expect((await operator.describeCluster({})).cluster?.rpcAddress).toBe(`[::1]:${port}`);
  } finally {
    child.kill("SIGTERM");
    await child.exited;
  }
}, 40_000);
