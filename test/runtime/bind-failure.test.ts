/**
 * A start that cannot bind its addresses (a port another process holds, a bindOnIP that
 * is not this machine's) exits 1 naming the address and the setting, and leaves the
 * datastore as it found it: no PGlite data dir, no table in the PostgreSQL database. A
 * first start with a wrong port must not pin the cluster's identity from that config.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { createTestDatabase } from "../support/postgres";
import { testConfigYaml } from "../support/server";
import { testStores } from "../support/stores";
import { runServerToExit } from "./server-process";

/** Listens on 127.0.0.1 on an ephemeral port: the port a server is then told to use. */
async function holdPort(): Promise<{ port: number; release(): Promise<void> }> {
  const server: Server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const address = server.address();
  if (typeof address !== "object" || !address) throw new Error("no port assigned");
  return { port: address.port, release: () => new Promise((resolve) => server.close(() => resolve())) };
}

/** The test config with its rpc block replaced by rpc. */
function configWithRpc(store: "pglite" | "postgres", dataLocation: string, rpc: string): string {
  const yaml = testConfigYaml({ store, dataLocation });
  const original = "rpc: { bindOnIP: 127.0.0.1, port: 0 }";
  if (!yaml.includes(original)) throw new Error("testConfigYaml changed: update configWithRpc in bind-failure.test.ts");
  return yaml.replace(original, `rpc: ${rpc}`);
}

/** Binding an address this machine does not have succeeds where the kernel allows non-local binds. */
const nonLocalBind = (() => {
  try {
    return readFileSync("/proc/sys/net/ipv4/ip_nonlocal_bind", "utf8").trim() === "1";
  } catch {
    return false;
  }
})();

for (const store of await testStores()) {
  describe(`a start that cannot bind, on ${store}`, () => {
    const dir = mkdtempSync(join(tmpdir(), "tern-bind-"));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    /**
     * Starts a server with the given rpc block over a datastore nobody created yet and
     * returns what it printed, after checking that it exited 1 and created nothing.
     */
    async function failedStart(name: string, rpc: string): Promise<string> {
      const db = store === "postgres" ? await createTestDatabase() : undefined;
      const dataLocation = db?.url ?? join(dir, name, "db");
      const configPath = join(dir, `${name}.yaml`);
      writeFileSync(configPath, configWithRpc(store, dataLocation, rpc));
      try {
        const { code, output } = await runServerToExit(["--config", configPath]);
        expect({ code, output }).toMatchObject({ code: 1 });
        if (db) expect(await tablesIn(db.url)).toEqual([]);
        else expect(existsSync(dataLocation)).toBe(false);
        return output;
      } finally {
        await db?.drop();
      }
    }

    test("PortInUse: exit 1 naming 127.0.0.1:port and services.frontend.rpc.port; nothing created", async () => {
      const held = await holdPort();
      try {
        const output = await failedStart("port", `{ bindOnIP: 127.0.0.1, port: ${held.port}, grpcPort: 0 }`);
        expect(output).toContain(`tern server failed to start: cannot listen on 127.0.0.1:${held.port} (services.frontend.rpc.port): the port is in use`);
      } finally {
        await held.release();
      }
    });

    test("GrpcPortInUse: exit 1 naming 127.0.0.1:grpcPort and services.frontend.rpc.grpcPort; nothing created", async () => {
      const held = await holdPort();
      try {
        const output = await failedStart("grpc-port", `{ bindOnIP: 127.0.0.1, port: 0, grpcPort: ${held.port} }`);
        expect(output).toContain(`tern server failed to start: cannot listen on 127.0.0.1:${held.port} (services.frontend.rpc.grpcPort): the port is in use`);
      } finally {
        await held.release();
      }
    });

    // 192.0.2.1 is TEST-NET-1 (RFC 5737): no machine's own address.
    test.skipIf(nonLocalBind)("BindOnIPNotThisMachines: exit 1 naming 192.0.2.1:port and services.frontend.rpc.bindOnIP; nothing created", async () => {
      const output = await failedStart("bind-ip", "{ bindOnIP: 192.0.2.1, port: 7233, grpcPort: 0 }");
      expect(output).toContain("tern server failed to start: cannot listen on 192.0.2.1:7233 (services.frontend.rpc.bindOnIP): the address is not this machine's");
    });
  });
}

/** The tables in a PostgreSQL database, outside PostgreSQL's own schemas. */
async function tablesIn(url: string): Promise<string[]> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const rows = await sql<{ name: string }[]>`
      select table_schema || '.' || table_name as name from information_schema.tables
      where table_schema not in ('pg_catalog', 'information_schema') order by 1`;
    return rows.map((r) => r.name);
  } finally {
    await sql.end({ timeout: 1 });
  }
}
