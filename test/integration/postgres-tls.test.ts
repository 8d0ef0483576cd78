import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chownSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import { POSTGRES_BIN, startPrivatePostgres, type PrivatePostgres } from "../../bench/lib/private-postgres";
import { openDatabase } from "../../src/persistence/database";
import { redactUrl, tlsParameters } from "../../src/persistence/postgres-url";

describe("a PostgreSQL URL's TLS parameters", () => {
  const url = "postgres://tern@db.example/tern";
  const files = (path: string) => Buffer.from(`contents of ${path}`);

  test("LeaveTheURLToPostgresJsWhereTheyNameNoFileAndCheckNoCertificate", () => {
    for (const q of ["", "?sslmode=require", "?sslmode=prefer&connect_timeout=5", "?sslmode=disable"]) expect(tlsParameters(url + q, "db.example", files)).toEqual({ url: url + q });
  });

  test("AreTakenOutOfTheURL, the files read, verify-ca checking the chain but not the host", () => {
    const { url: rest, ssl } = tlsParameters(`${url}?sslmode=verify-ca&sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem&sslpassword=pw&connect_timeout=5`, "db.example", files);
    expect(rest).toBe(`${url}?connect_timeout=5`);
    expect(ssl).toMatchObject({ ca: files("/ca.pem"), cert: files("/c.pem"), key: files("/k.pem"), passphrase: "pw", rejectUnauthorized: true });
    expect((ssl as { checkServerIdentity: () => unknown }).checkServerIdentity()).toBeUndefined();
  });

  test("MakeRequireWithARootCertificateVerifyTheChain, as libpq does, and system mean verify-full", () => {
    expect(tlsParameters(`${url}?sslmode=require&sslrootcert=/ca.pem`, "db.example", files).ssl).toMatchObject({ rejectUnauthorized: true });
    expect(tlsParameters(`${url}?sslmode=require&sslcert=/c.pem&sslkey=/k.pem`, "db.example", files).ssl).toMatchObject({ rejectUnauthorized: false });
    const system = tlsParameters(`${url}?sslrootcert=system`, "db.example", files).ssl as { ca?: unknown; rejectUnauthorized: boolean };
    expect(system.ca).toBeUndefined();
    expect(system.rejectUnauthorized).toBe(true);
  });

  test("AreRefusedWhereTheyWouldNotTakeEffect, naming what to set", () => {
    const refused = (q: string) => () => tlsParameters(url + q, "db.example", files);
    expect(refused("?sslrootcert=/ca.pem")).toThrow("the PostgreSQL URL names sslrootcert with no sslmode: set sslmode=require, verify-ca or verify-full for TLS with them");
    expect(refused("?sslmode=prefer&sslcert=/c.pem&sslkey=/k.pem")).toThrow("names sslcert, sslkey with sslmode=prefer");
    expect(refused("?sslmode=require&sslrootcert=system")).toThrow("sslrootcert=system with sslmode=require: the system's CAs are taken with verify-full only");
    expect(refused("?sslmode=require&sslcert=/c.pem")).toThrow("names sslcert without sslkey: a client certificate needs both");
    expect(() => tlsParameters(`${url}?sslmode=verify-full`, undefined, files)).toThrow("sslmode=verify-full with more than one host or none");
  });

  test("NameAFileThatCannotBeRead", () => {
    expect(() => tlsParameters(`${url}?sslmode=verify-full&sslrootcert=/nowhere/ca.pem`, "db.example")).toThrow("the PostgreSQL URL's sslrootcert /nowhere/ca.pem cannot be read: ENOENT");
  });

  test("HideTheKey's passphrase in messages", () => {
    expect(redactUrl(`${url}?sslmode=verify-full&sslpassword=secret`)).toBe(`${url}?sslmode=verify-full&sslpassword=***`);
  });
});

// Needs PostgreSQL's binaries (initdb, pg_ctl) and openssl: skipped where they are not, loudly.
const tools = existsSync(`${POSTGRES_BIN}/initdb`) && Bun.which("openssl") !== null;
if (!tools) console.warn(`\n!!! no PostgreSQL binaries in ${POSTGRES_BIN} or no openssl: PostgreSQL over TLS with certificates is SKIPPED !!!\n`);

/**
 * A private PostgreSQL with TLS on, its certificate signed by a CA of the test's own (for
 * 127.0.0.1 only), listening on 127.0.0.1 and 127.0.0.2, and taking database `certonly` only
 * from a client certificate the CA signed (its name the user's).
 */
describe.if(tools)("tern on PostgreSQL over TLS with a private CA", () => {
  let pg: PrivatePostgres;
  let dir: string;
  const at = (host: string, db: string, q: string) => `postgres://postgres@${host}:${new URL(pg.url("x")).port}/${db}?${q}`;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "tern-tls-"));
    const ssl = async (...args: string[]) => {
      const p = Bun.spawn(["openssl", ...args], { cwd: dir, stdout: "ignore", stderr: "pipe" });
      if ((await p.exited) !== 0) throw new Error(`openssl ${args.join(" ")}: ${await new Response(p.stderr).text()}`);
    };
    const signed = async (name: string, subject: string, ext: string) => {
      writeFileSync(join(dir, `${name}.ext`), ext);
      await ssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", subject);
      await ssl("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-out", `${name}.pem`, "-extfile", `${name}.ext`);
    };
    await ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=tern test CA");
    await signed("server", "/CN=tern test server", "subjectAltName=IP:127.0.0.1\n");
    await signed("client", "/CN=postgres", "extendedKeyUsage=clientAuth\n");
    writeFileSync(join(dir, "hba.conf"), "hostssl certonly all 127.0.0.1/32 cert\nhost all all 127.0.0.1/32 trust\nhost all all 127.0.0.2/32 trust\nlocal all all trust\n");
    const pw = Number((await Bun.$`id -u postgres`.text()).trim());
    for (const f of ["server.pem", "server.key", "ca.pem", "hba.conf"]) chownSync(join(dir, f), pw, pw);
    chownSync(dir, pw, pw);
    pg = await startPrivatePostgres({
      ssl: "on",
      ssl_cert_file: join(dir, "server.pem"),
      ssl_key_file: join(dir, "server.key"),
      ssl_ca_file: join(dir, "ca.pem"),
      hba_file: join(dir, "hba.conf"),
      listen_addresses: "'127.0.0.1,127.0.0.2'",
    });
    await Bun.$`psql ${pg.url("postgres")} -qc "create database certonly"`.quiet();
  });
  afterAll(async () => {
    await pg?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Opens tern's database at url, and says whether its session is over TLS. */
  async function overTls(url: string): Promise<boolean> {
    const database = await openDatabase({ postgres: { url } });
    try {
      const res = await database.db.execute(sql`select ssl from pg_stat_ssl where pid = pg_backend_pid()`);
      const rows = ((res as { rows?: unknown[] }).rows ?? (res as unknown as unknown[])) as { ssl: boolean }[];
      return rows[0]!.ssl;
    } finally {
      await database.close();
    }
  }
  const ca = () => `sslrootcert=${join(dir, "ca.pem")}`;

  test("VerifyFullWithTheCAConnects to an IP address its certificate names", async () => {
    expect(await overTls(at("127.0.0.1", "postgres", `sslmode=verify-full&${ca()}`))).toBe(true);
  });

  test("VerifyFullWithoutTheCAIsRefused: the chain is not one the system trusts", async () => {
    await expect(overTls(at("127.0.0.1", "postgres", "sslmode=verify-full"))).rejects.toThrow(
      "self signed certificate in certificate chain (no CA this system trusts signed the server's certificate: name the file of the CA that did with sslrootcert=/path/ca.pem in the URL)",
    );
  });

  test("VerifyFullToAnotherAddressIsRefused, verify-ca there connects (the chain checked, not the host)", async () => {
    await expect(overTls(at("127.0.0.2", "postgres", `sslmode=verify-full&${ca()}`))).rejects.toThrow("Hostname/IP does not match certificate's altnames: IP: 127.0.0.2 is not in the cert's list: 127.0.0.1");
    expect(await overTls(at("127.0.0.2", "postgres", `sslmode=verify-ca&${ca()}`))).toBe(true);
  });

  test("AClientCertificateIsSent where the server asks for one", async () => {
    const client = `sslcert=${join(dir, "client.pem")}&sslkey=${join(dir, "client.key")}`;
    expect(await overTls(at("127.0.0.1", "certonly", `sslmode=verify-full&${ca()}&${client}`))).toBe(true);
    await expect(overTls(at("127.0.0.1", "certonly", `sslmode=verify-full&${ca()}`))).rejects.toThrow("connection requires a valid client certificate");
  });
});
