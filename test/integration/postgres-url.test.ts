import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import postgres from "postgres";
import { openDatabase, type Database } from "../../src/persistence/database";
import { hostParameter, redactUrl } from "../../src/persistence/postgres-url";
import { runStatement } from "../../src/persistence/raw-statements";
import { testEnv } from "../support/env";
import { createTestDatabase } from "../support/postgres";
import { testStores } from "../support/stores";
import { startTcpProxy } from "../support/tcp-proxy";

describe("a PostgreSQL URL's libpq-style host parameter", () => {
  test("BecomesTheSocketDirectory and leaves the URL's other parameters", () => {
    expect(hostParameter("postgres://tern@localhost:5433/tern")).toEqual({ url: "postgres://tern@localhost:5433/tern" });
    expect(hostParameter("postgres://tern@localhost/tern?host=/var/run/postgresql")).toEqual({ url: "postgres://tern@localhost/tern", host: "/var/run/postgresql" });
    expect(hostParameter("postgres://tern@localhost/tern?sslmode=disable&host=%2Frun%2Fpg&connect_timeout=5")).toEqual({
      url: "postgres://tern@localhost/tern?sslmode=disable&connect_timeout=5",
      host: "/run/pg",
    });
  });

  test("TakesAHostNameAsWell, over the URL's", () => {
    expect(hostParameter("postgres://tern@localhost/tern?host=db.internal")).toEqual({ url: "postgres://tern@localhost/tern", host: "db.internal" });
    // An empty parameter leaves the URL's host.
    expect(hostParameter("postgres://tern@localhost/tern?host=")).toEqual({ url: "postgres://tern@localhost/tern" });
  });
});

describe("a PostgreSQL URL's IPv6 host", () => {
  test("GoesToPostgresJsAsAOneHostListWithItsPort (a host string is split at each colon)", () => {
    expect(hostParameter("postgres://tern@[::1]:5433/tern")).toEqual({ url: "postgres://tern@[::1]:5433/tern", host: ["::1"], port: [5433] });
    expect(hostParameter("postgres://tern@[fd00::7]/tern?sslmode=disable")).toEqual({ url: "postgres://tern@[fd00::7]/tern?sslmode=disable", host: ["fd00::7"], port: [5432] });
    expect(hostParameter("postgres://tern@localhost:5433/tern?host=::1")).toEqual({ url: "postgres://tern@localhost:5433/tern", host: ["::1"], port: [5433] });
  });
});

/** As PostgreSQL with ssl off: "N" to the SSLRequest; the TLS hello that follows it is no startup, and the connection ends. */
function serverWithoutSsl() {
  return Bun.listen<boolean>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(socket) {
        if (socket.data) socket.end();
        else socket.write("N");
        socket.data = true;
      },
    },
  });
}

describe("a PostgreSQL URL whose sslmode asks for TLS of a server that takes none", () => {
  test("SaysWhyTheConnectionEndedAsTLSBegan", async () => {
    const plain = serverWithoutSsl();
    try {
      const open = openDatabase({ postgres: { url: `postgres://u@127.0.0.1:${plain.port}/x?sslmode=require` } });
      await expect(open).rejects.toThrow(
        "before secure TLS connection was established (the connection ended as TLS began: does the server take SSL? The URL's sslmode asks for it; prefer falls back to a plain connection)",
      );
    } finally {
      plain.stop(true);
    }
  });
});

describe("a PostgreSQL URL that cannot be one, and a password in messages", () => {
  test("RefusesWhatIsNotAPostgresUrl, naming the setting, before connecting", async () => {
    const open = (url: string) => openDatabase({ postgres: { url } });
    const setting = "the PostgreSQL URL (persistence.datastore.postgres.url, or TERN_DATABASE_URL)";
    const invalid = `${setting} is not a valid URL (a port over 65535, or a / ? or # in the password not percent-encoded, say)`;
    await expect(open("garbage")).rejects.toThrow(`${invalid}: "garbage"`);
    await expect(open("postgres://u:s3cret@h:99999/x?password=s3cret")).rejects.toThrow(`${invalid}: "postgres://u:***@h:99999/x?password=***"`);
    // A password with a URL's separators in it, not percent-encoded, breaks the URL: none of it is shown (all of it or its tail was).
    for (const password of ["s3/cret", "s3?cret", "s3#cret", "s3:cret", "s3@cret"]) {
      const refused = await open(`postgres://u:${password}@h:99999/x`).then(() => "", (e: Error) => e.message);
      expect([refused.includes("s3"), refused.includes("cret"), refused.endsWith('"postgres://u:***@h:99999/x"')]).toEqual([false, false, true]);
    }
    await expect(open("mysql://u@h/x")).rejects.toThrow(`${setting} must start with postgres:// or postgresql://, not mysql://`);
    // Was taken for TLS with the certificate checked, and failed at the connection (here: refused).
    await expect(open("postgres://u@127.0.0.1:1/x?sslmode=requre")).rejects.toThrow(`${setting} has sslmode=requre, which is none of disable, prefer, require, verify-ca, verify-full`);
  });

  test("RefusesSslmodeAllow, which postgres.js takes for TLS with no plain connection first (libpq's meaning), saying what to use", async () => {
    // Which libpq's allow reaches by a plain connection: postgres.js went on to TLS and failed as TLS began.
    const plain = serverWithoutSsl();
    try {
      await expect(openDatabase({ postgres: { url: `postgres://u@127.0.0.1:${plain.port}/x?sslmode=allow` } })).rejects.toThrow(
        "the PostgreSQL URL (persistence.datastore.postgres.url, or TERN_DATABASE_URL) has sslmode=allow, which tern does not take: its driver goes straight to TLS there, with no plain connection first as libpq tries; use prefer (TLS where the server takes it, else plain), disable (plain) or require (TLS)",
      );
    } finally {
      plain.stop(true);
    }
  });

  test("HidesAPasswordGivenAsAParameterToo", () => {
    expect(redactUrl("postgres://u:s3cret@h/db?password=s3cret&sslmode=require")).toBe("postgres://u:***@h/db?password=***&sslmode=require");
    expect(redactUrl("postgres://u@h/db?sslmode=require")).toBe("postgres://u@h/db?sslmode=require");
  });
});

// Skipped only where the PostgreSQL suites are (loudly; never in CI).
describe.if((await testStores()).includes("postgres"))("opening PostgreSQL through its Unix socket", () => {
  let target: { url: string; drop(): Promise<void> };
  let socketDir: string;
  let database: Database | undefined;

  beforeAll(async () => {
    target = await createTestDatabase();
    const admin = postgres(testEnv.postgresUrl, { max: 1, onnotice: () => {} });
    try {
      const [row] = await admin<{ dirs: string }[]>`select current_setting('unix_socket_directories') as dirs`;
      socketDir = row!.dirs.split(",")[0]!.trim();
    } finally {
      await admin.end({ timeout: 1 });
    }
  });
  afterAll(async () => {
    await database?.close();
    await target.drop();
  });

  test("ConnectsOverTheSocket, not TCP", async () => {
    expect(socketDir).toStartWith("/");
    const url = new URL(target.url);
    // A host that does not resolve: only the socket directory can reach the server.
    url.hostname = "tern-no-such-host.invalid";
    url.searchParams.set("host", socketDir);
    database = await openDatabase({ postgres: { url: url.toString() } });
    // postgres.js answers execute with the rows themselves.
    const rows = (await database.db.execute(sql`select client_addr is null as unix from pg_stat_activity where pid = pg_backend_pid()`)) as unknown as { unix: boolean }[];
    expect(rows.map((r) => r.unix)).toEqual([true]);
  });
});

describe.if((await testStores()).includes("postgres"))("opening PostgreSQL at an IPv6 address", () => {
  test("ConnectsToTheAddress, where the host was looked up as \"[\" (getaddrinfo ENOTFOUND [)", async () => {
    const target = await createTestDatabase();
    const postgresAt = new URL(target.url);
    // PostgreSQL here may listen on IPv4 only: a proxy on ::1 in front of it.
    const proxy = await startTcpProxy({ host: postgresAt.hostname, port: Number(postgresAt.port || 5432) }, { listenHost: "::1" });
    let database: Database | undefined;
    try {
      postgresAt.host = `[::1]:${proxy.port}`;
      database = await openDatabase({ postgres: { url: postgresAt.toString() } });
      const rows = (await database.db.execute(sql`select current_database() as name`)) as unknown as { name: string }[];
      expect(rows[0]!.name).toBe(new URL(target.url).pathname.slice(1));
    } finally {
      await database?.close();
      await proxy.close();
      await target.drop();
    }
  });
});

describe.if((await testStores()).includes("postgres"))("a server's PostgreSQL pool", () => {
  let target: { url: string; drop(): Promise<void> };
  beforeAll(async () => {
    target = await createTestDatabase();
  });
  afterAll(() => target.drop());

  /** The backend that answered q, a `select pg_backend_pid() as pid ...`. */
  const pidOf = async (q: Promise<unknown>) => ((await q) as { pid: number }[])[0]!.pid;

  /** The backends of database's pool that served 20 statements issued at once, each holding its connection 50 ms. */
  const backendsAtOnce = async (database: Database) =>
    new Set(await Promise.all(Array.from({ length: 20 }, () => pidOf(database.db.execute(sql`select pg_backend_pid() as pid, pg_sleep(0.05)`))))).size;

  /** backendsAtOnce of a fresh pool of maxConnections (default: tern's). */
  async function backendsServing(maxConnections?: number): Promise<number> {
    const database = await openDatabase({ postgres: { url: target.url, ...(maxConnections && { maxConnections }) } });
    try {
      return await backendsAtOnce(database);
    } finally {
      await database.close();
    }
  }

  test("OpensEightConnectionsAtMostByDefault", async () => {
    expect(await backendsServing()).toBe(8);
  });

  test("OpensAsManyAsMaxConnectionsSays", async () => {
    expect(await backendsServing(3)).toBe(3);
    expect(await backendsServing(12)).toBe(12);
  });

  // scripts/dependency-mends.json, mend 8: postgres.js handed out its idle connections oldest
  // first, so one statement or transaction after another visited every backend of the pool.
  test("HandsOutTheConnectionUsedLast, to statements and to pipelined transactions alike", async () => {
    const database = await openDatabase({ postgres: { url: target.url } });
    try {
      const statement = () => pidOf(database.db.execute(sql`select pg_backend_pid() as pid`));
      const transaction = () => database.pipelined!.run(async (tx, commit) => {
        const pid = pidOf(runStatement(tx, "select pg_backend_pid() as pid", []));
        commit();
        return pid;
      });
      // Every connection of the pool open and idle.
      expect(await backendsAtOnce(database)).toBe(8);
      const served: number[] = [];
      for (let i = 0; i < 8; i++) served.push(await statement(), await transaction());
      expect(new Set(served).size).toBe(1);
    } finally {
      await database.close();
    }
  });
});
