import { setDefaultTimeout, expect, test } from "bun:test";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { ulid } from "ulid";
import { testEnv } from "../support/env";
import { createTestDatabase } from "../support/postgres";
import { newDataLocation, testConfigYaml } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

const root = fileURLToPath(new URL("../..", import.meta.url));
const tern = async (...args: string[]) => {
  const child = Bun.spawn(["node", "bin/tern", ...args], { cwd: root, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { out, err, code };
};

for (const store of await testStores()) {
  test(`admin db status and migrate on ${store}: pending, then applied, then nothing to do`, async () => {
    const data = await newDataLocation(store);
    try {
      const target = store === "postgres" ? ["--database-url", data.location] : (() => {
        const config = join(data.location, "tern.yaml");
        writeFileSync(config, testConfigYaml({ store, dataLocation: join(data.location, "db") }));
        return ["--config", config];
      })();
      const before = await tern("admin", "db", "status", ...target, "-o", "json");
      expect(before.code).toBe(0);
      const s0 = JSON.parse(before.out);
      expect(s0.applied).toEqual([]);
      expect(s0.pending.length).toBeGreaterThanOrEqual(2);
      expect(s0.pending[0]).toBe("0000_init");
      if (store === "pglite") {
        // A look makes no database: the path may be mistyped.
        expect(existsSync(join(data.location, "db"))).toBe(false);
        const text = await tern("admin", "db", "status", ...target);
        expect(text.out).toContain(`No database there yet (a server's first start, or 'tern admin db migrate ${target.join(" ")}', makes it); is the path right?\n`);
        expect(existsSync(join(data.location, "db"))).toBe(false);
      }
      const migrate = await tern("admin", "db", "migrate", ...target, "-o", "json");
      expect(migrate.code).toBe(0);
      expect(JSON.parse(migrate.out).applied).toEqual(s0.pending);
      const after = JSON.parse((await tern("admin", "db", "status", ...target, "-o", "json")).out);
      expect(after).toMatchObject({ applied: s0.pending, pending: [], unknownApplied: 0 });
      const again = await tern("admin", "db", "migrate", ...target);
      expect(again.code).toBe(0);
    } finally {
      await data.remove();
    }
  });
}

/** Runs fn with a new login role (dropped after it) and url as that role. */
async function asNewRole<T>(url: string, fn: (role: string, url: string) => Promise<T>): Promise<T> {
  const role = `tern_test_role_${ulid().toLowerCase()}`;
  const server = postgres(testEnv.postgresUrl, { max: 1, onnotice: () => {} });
  try {
    await server.unsafe(`create role ${role} login`);
    const as = new URL(url);
    as.username = role;
    return await fn(role, as.toString());
  } finally {
    await server.unsafe(`drop role if exists ${role}`);
    await server.end({ timeout: 1 });
  }
}

/** What a migration refused for want of CREATE adds to PostgreSQL's reason. */
const MIGRATING_ROLE =
  "; migrations need a role that may create in the database and in the schema tern's tables go in (GRANT CREATE ON DATABASE ... and GRANT CREATE ON SCHEMA public TO it), " +
  "or apply them first with tern admin db migrate as the database's owner";

/** Whether the database at url holds anything of tern's (drizzle's journal schema comes first). */
async function madeAnything(url: string): Promise<boolean> {
  const inDb = postgres(url, { max: 1, onnotice: () => {} });
  try {
    return (await inDb`select nspname from pg_namespace where nspname = 'drizzle'`).length > 0;
  } finally {
    await inDb.end({ timeout: 1 });
  }
}

test.if((await testStores()).includes("postgres"))("admin db migrate by a role that may not create says the database's reason, and makes nothing", async () => {
  const target = await createTestDatabase();
  try {
    await asNewRole(target.url, async (_role, url) => {
      const r = await tern("admin", "db", "migrate", "--database-url", url);
      // Was `error: Failed query: CREATE SCHEMA IF NOT EXISTS "drizzle"`, the reason left out.
      expect([r.code, r.err]).toEqual([1, `error: migrating the database failed: 42501: permission denied for database ${new URL(url).pathname.slice(1)}${MIGRATING_ROLE}\n`]);
    });
    expect(await madeAnything(target.url)).toBe(false);
  } finally {
    await target.drop();
  }
});

test.if((await testStores()).includes("postgres"))("admin db migrate by a role that may create a schema but not in schema public says what it needs", async () => {
  // PostgreSQL 15 gives PUBLIC no CREATE on schema public: granted the database's CREATE only, the role makes drizzle's journal and stops there.
  const target = await createTestDatabase();
  try {
    await asNewRole(target.url, async (role, url) => {
      const owner = postgres(target.url, { max: 1, onnotice: () => {} });
      try {
        await owner.unsafe(`grant create on database ${new URL(url).pathname.slice(1)} to ${role}`);
        const r = await tern("admin", "db", "migrate", "--database-url", url);
        expect([r.code, r.err]).toEqual([1, `error: migrating the database failed: 42501: permission denied for schema public${MIGRATING_ROLE}\n`]);
        // The empty drizzle schema left behind is no harm: granted what it lacked, the same command migrates.
        await owner.unsafe(`grant create on schema public to ${role}`);
        const again = await tern("admin", "db", "migrate", "--database-url", url);
        expect([again.code, again.err]).toEqual([0, ""]);
        await owner.unsafe(`revoke create on schema public from ${role}`);
      } finally {
        // What it made and was granted there, for the role to be dropped.
        await owner.unsafe(`drop owned by ${role}`);
        await owner.end({ timeout: 1 });
      }
    });
  } finally {
    await target.drop();
  }
});

// Was: "12 pending: run 'tern admin db migrate'", which, copied as said, migrates the database of
// config/development.yaml (or $TERN_CONFIG), not the one just looked at.
test("admin db status names the migrate command for the database it looked at: its --config, or the same --database-url", async () => {
  const data = await newDataLocation("pglite");
  try {
    const config = join(data.location, "tern.yaml");
    writeFileSync(config, testConfigYaml({ store: "pglite", dataLocation: join(data.location, "db") }));
    const text = await tern("admin", "db", "status", "--config", config);
    expect(text.code).toBe(0);
    expect(text.out).toContain(`No database there yet (a server's first start, or 'tern admin db migrate --config ${config}', makes it); is the path right?\n`);
    expect(text.out.split("\n").at(-2)).toMatch(/^\d+ pending: run 'tern admin db migrate --config \S+'$/);
    expect(text.out).toEndWith(` pending: run 'tern admin db migrate --config ${config}'\n`);
  } finally {
    await data.remove();
  }
  if (!(await testStores()).includes("postgres")) return;
  const target = await createTestDatabase();
  try {
    const text = await tern("admin", "db", "status", "--database-url", target.url);
    expect(text.code).toBe(0);
    expect(text.out.split("\n").at(-2)).toMatch(/^\d+ pending: run 'tern admin db migrate' with the same --database-url$/);
  } finally {
    await target.drop();
  }
});

test("admin db with both --config and --database-url is refused: which database was meant is not said", async () => {
  // Was: the URL, the config file unread.
  const r = await tern("admin", "db", "migrate", "--config", "config/development.yaml", "--database-url", "postgres://u@127.0.0.1:1/x");
  expect([r.code, r.err]).toEqual([2, "error: give --config or --database-url, not both (--database-url takes the place of the config's datastore)\n(run 'tern admin db migrate --help' for usage)\n"]);
});

// The checks a server's start makes, made by the command too: it made tern's tables in a LATIN1
// database, and said a database ready that its role could not write ("Schema already up to date").
test.if((await testStores()).includes("postgres"))("admin db migrate on a LATIN1 database is refused naming the encoding, and makes nothing", async () => {
  const target = await createTestDatabase("tern_test", "LATIN1");
  try {
    const r = await tern("admin", "db", "migrate", "--database-url", target.url);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^error: the database tern_test_\w+ is encoded LATIN1, which cannot hold all the text tern stores .*; tern needs a UTF8 database \(CREATE DATABASE \.\.\. ENCODING 'UTF8' TEMPLATE template0\)\n$/);
    expect(await madeAnything(target.url)).toBe(false);
  } finally {
    await target.drop();
  }
});

test.if((await testStores()).includes("postgres"))("admin db migrate by a role lacking privileges on some tables is refused naming them", async () => {
  const target = await createTestDatabase();
  const inDb = postgres(target.url, { max: 1, onnotice: () => {} });
  try {
    expect((await tern("admin", "db", "migrate", "--database-url", target.url)).code).toBe(0);
    await asNewRole(target.url, async (role, url) => {
      try {
        // Granted tern's tables, but one it may only read.
        await inDb.unsafe(`grant usage on schema public, drizzle to ${role}; grant select on all tables in schema drizzle to ${role}`);
        await inDb.unsafe(`grant select, insert, update, delete on all tables in schema public to ${role}; revoke insert, update, delete on history_events from ${role}`);
        const r = await tern("admin", "db", "migrate", "--database-url", url);
        expect([r.code, r.err]).toEqual([1, `error: the database role ${role} lacks privileges tern needs on its tables: INSERT, UPDATE, DELETE on history_events; grant them (GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ... TO ${role})\n`]);
      } finally {
        await inDb.unsafe(`drop owned by ${role}`); // its grants, for the role to be dropped
      }
    });
  } finally {
    await inDb.end({ timeout: 1 });
    await target.drop();
  }
});
