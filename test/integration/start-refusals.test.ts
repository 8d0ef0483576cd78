import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import postgres from "postgres";
import { newDataLocation, startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

const removals: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const remove of removals.reverse()) await remove();
});

/** A new PostgreSQL database a server has started and stopped on (migrated, its identity persisted), and an admin session on it. */
async function startedDatabase(): Promise<{ location: string; dbName: string; admin: postgres.Sql }> {
  const { location, remove } = await newDataLocation("postgres");
  removals.push(remove);
  await (await startTestCluster({ store: "postgres", dataLocation: location })).stop();
  const admin = postgres(location, { max: 1, onnotice: () => {} });
  removals.push(() => admin.end({ timeout: 1 }));
  return { location, dbName: new URL(location).pathname.slice(1), admin };
}

/** What a start on location says: "started", or its error's message. */
async function startOutcome(location: string): Promise<string> {
  let c: TestCluster | undefined;
  try {
    c = await startTestCluster({ store: "postgres", dataLocation: location });
    return "started";
  } catch (e) {
    return (e as Error).message;
  } finally {
    await c?.stop();
  }
}

// A database a server cannot start on says why in the start's error, with PostgreSQL's code and
// reason, never as the statement it refused with its parameters.
describe.if((await testStores()).includes("postgres"))("a start the database refuses", () => {
  test("TestStartOnAReadOnlyDatabase: refused with PostgreSQL's reason, not the statement", async () => {
    // As a standby after a failover, or a database an operator switched read-only.
    const { location, dbName, admin } = await startedDatabase();
    await admin.unsafe(`alter database ${dbName} set default_transaction_read_only = on`);
    const outcome = await startOutcome(location);
    expect(outcome).toMatch(/^the database refused a statement \(25006: cannot execute [A-Z ]+ in a read-only transaction\)$/);
  });
});
