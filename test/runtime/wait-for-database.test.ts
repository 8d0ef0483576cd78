/**
 * A server started before its PostgreSQL accepts connections (a docker-compose or systemd
 * boot): by default it exits at once with a clear error; with --wait-for-database (or
 * TERN_DATABASE_WAIT) it retries until PostgreSQL answers, then serves, or exits with that
 * error when the time is up. Real server processes of each entry (Bun, Node, Deno: one boot,
 * src/entry/boot.ts, so the same arguments, variables and signals); "PostgreSQL" is a TCP proxy
 * to the test's, started on a port where nothing listened before.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { createServer } from "node:net";
import { buildRuntimes } from "../../scripts/build-runtimes";
import { serverStartTimeout } from "../support/timeouts";
import { eventually } from "../support/eventually";
import { testEnv } from "../support/env";
import { createTestDatabase } from "../support/postgres";
import { testStores } from "../support/stores";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy";
import { serverEntries, spawnServerProcess, type ServerProcess } from "./server-process";

const entries = serverEntries();

/** A port nothing listens on (free a moment ago). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe.if((await testStores()).includes("postgres"))("a server whose PostgreSQL is not up yet", () => {
  let target: { url: string; drop(): Promise<void> };
  let port: number;
  /** The test database's URL at `port`, where nothing listens until a test starts the proxy. */
  let urlAtPort: string;
  let proxy: TcpProxy | undefined;
  let server: ServerProcess | undefined;

  beforeAll(async () => {
    await buildRuntimes();
    target = await createTestDatabase("tern_wait");
  }, serverStartTimeout);
  afterAll(() => target.drop());
  afterEach(async () => {
    await server?.destroy();
    await proxy?.close();
    server = proxy = undefined;
  });

  const atFreePort = async () => {
    port = await freePort();
    const url = new URL(target.url);
    url.host = `127.0.0.1:${port}`;
    urlAtPort = url.toString();
  };

  test("FailsAtOnceWhereWaitingCannotHelp: a database that does not exist, however long the wait", async () => {
    const url = new URL(target.url);
    url.pathname = "/tern_no_such_database";
    const starting = await spawnServerProcess(entries[0]!.cmd, { databaseUrl: url.toString(), args: ["--wait-for-database", "10m"] });
    expect(await starting.exited).toBe(1);
    expect(starting.output()).toContain(`cannot connect to PostgreSQL at ${url}: database "tern_no_such_database" does not exist\n`);
    expect(starting.output()).not.toContain("waiting for the database");
  }, 30_000);

  for (const entry of entries) {
    describe(`(${entry.name} entry)`, () => {
      test.skipIf(!entry.present)("WaitsWithWaitForDatabase, and serves once PostgreSQL listens", async () => {
        await atFreePort();
        const starting = await spawnServerProcess(entry.cmd, { databaseUrl: urlAtPort, args: ["--wait-for-database", "60s"] });
        // It tried, was refused, and said it waits (once: the next line is due 10 s later).
        await eventually(() => expect(starting.output()).toContain(`"msg":"waiting for the database"`), { timeout: 20_000 });
        const upstream = new URL(testEnv.postgresUrl);
        proxy = await startTcpProxy({ host: upstream.hostname, port: Number(upstream.port || 5432) }, { listenPort: port });
        server = await starting.ready;
        expect(await (await fetch(`${server.httpUrl}/health`)).json()).toEqual({ status: "SERVING" });
        const output = server.output();
        expect(output.split("\n").filter((l) => l.includes(`"msg":"waiting for the database"`))).toHaveLength(1);
        expect(output).toContain(`"msg":"database reachable"`);
        // Ctrl-C in a terminal stops it as SIGTERM does.
        expect(await server.stop("SIGINT")).toBe(0);
        expect(server.output()).toContain(`"msg":"stopped","cluster":"active","signal":"SIGINT"`);
      }, 60_000);

      test.skipIf(!entry.present)("StopsWaitingOnSIGTERM: exits 0 at once, not when the wait is over", async () => {
        await atFreePort();
        const starting = await spawnServerProcess(entry.cmd, { databaseUrl: urlAtPort, args: ["--wait-for-database", "10m"] });
        await eventually(() => expect(starting.output()).toContain(`"msg":"waiting for the database"`), { timeout: 20_000 });
        const t0 = performance.now();
        starting.kill("SIGTERM");
        // Before, the signal was kept for once the server was up: it waited on, the whole 10 minutes.
        const code = await Promise.race([starting.exited, Bun.sleep(5_000).then(() => "still waiting")]);
        if (code === "still waiting") starting.kill("SIGKILL");
        expect(code).toBe(0);
        expect(performance.now() - t0).toBeLessThan(2_000);
        expect(starting.output()).toContain("tern server stopped by SIGTERM while waiting for the database; it did not start\n");
      }, 30_000);

      test.skipIf(!entry.present)("ExitsAtOnceWithoutIt, naming the database and the refusal", async () => {
        await atFreePort();
        const starting = await spawnServerProcess(entry.cmd, { databaseUrl: urlAtPort });
        expect(await starting.exited).toBe(1);
        expect(starting.output()).toContain(`tern server failed to start: cannot connect to PostgreSQL at ${urlAtPort}: connect ECONNREFUSED 127.0.0.1:${port}\n`);
        expect(starting.output()).not.toContain("waiting for the database");
      }, 30_000);

      test.skipIf(!entry.present)("ExitsWithTheSameErrorWhenTheWaitIsOver (TERN_DATABASE_WAIT), saying how long it tried", async () => {
        await atFreePort();
        const starting = await spawnServerProcess(entry.cmd, { databaseUrl: urlAtPort, env: { TERN_DATABASE_WAIT: "1s" } });
        expect(await starting.exited).toBe(1);
        expect(starting.output()).toMatch(
          new RegExp(`tern server failed to start: cannot connect to PostgreSQL at ${urlAtPort.replace(/[.?]/g, "\\$&")}: connect ECONNREFUSED 127\\.0\\.0\\.1:${port} \\(\\d+ attempts in \\d+ ms; persistence\\.datastore\\.postgres\\.connectWaitMs is 1000 ms\\)\n`),
        );
      }, 30_000);
    });
  }
});
