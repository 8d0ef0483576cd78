/**
 * postgres.js's cancel requests, as tern's call deadlines use them (src/persistence/call-signal.ts):
 * a query's cancel() answers with the cancel request's own promise (mended at install, see
 * scripts/patch-dependencies.mjs, 12). Without it cancel() answered null, so tern could neither
 * wait for the request to reach PostgreSQL before giving the connection back to the pool, nor
 * catch its failure: a cancel request PostgreSQL could not be reached for (a reset, an outage)
 * was an unhandled rejection, which ends a Bun or Node process (the failover soak's crashes).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import postgres from "postgres";
import { eventually } from "../support/eventually";
import { createTestDatabase } from "../support/postgres";
import { testStores } from "../support/stores";
import { startTcpProxyFor, type TcpProxy } from "../support/tcp-proxy";

if ((await testStores()).includes("postgres")) {
  describe("a postgres.js query's cancel request", () => {
    let database: { url: string; drop(): Promise<void> };
    let proxy: TcpProxy;
    let sql: postgres.Sql;
    beforeAll(async () => {
      database = await createTestDatabase();
      const proxied = await startTcpProxyFor(database.url);
      proxy = proxied.proxy;
      sql = postgres(proxied.url, { max: 1, onnotice: () => {} });
    });
    afterAll(async () => {
      await sql.end({ timeout: 1 });
      await proxy.close();
      await database.drop();
    });

    /** A statement PostgreSQL runs for seconds, once it runs. */
    async function running(seconds: number) {
      const q = sql`select pg_sleep(${seconds})`;
      const outcome = q.then(() => "finished", (e: { code?: string }) => e.code ?? String(e));
      await eventually(() => expect((q as unknown as { active: boolean }).active).toBe(true));
      return { q, outcome };
    }

    test("TestCancelAnswersOnceTheRequestReachedPostgreSQL: the statement then fails as cancelled", async () => {
      const { q, outcome } = await running(30);
      const sent = q.cancel() as unknown;
      expect(sent).toBeInstanceOf(Promise);
      await sent;
      expect(await outcome).toBe("57014");
    });

    test("TestCancelThatCannotReachPostgreSQLRejectsItsOwnPromise: no unhandled rejection, the statement runs on", async () => {
      const { q, outcome } = await running(1);
      proxy.refuse(true);
      try {
        const sent = q.cancel() as unknown;
        expect(sent).toBeInstanceOf(Promise);
        expect(await (sent as Promise<unknown>).then(() => "sent", (e: { code?: string }) => e.code ?? String(e))).toMatch(/^ECONN/);
      } finally {
        proxy.refuse(false);
      }
      expect(await outcome).toBe("finished");
    });
  });
}
