import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createClusterDirectory } from "../../src/cluster/directory";
import { TernError } from "../../src/errors";
import { createNamespaceRegistry, type NamespaceRecord } from "../../src/namespace/registry";
import type { Db } from "../../src/persistence/database";
import { namespaces } from "../../src/persistence/schema";
import { eventually } from "../support/eventually";
import { holdingReads } from "../support/holding-reads";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** Expects the lookup to fail as a namespace that does not exist. */
async function missing(lookup: Promise<NamespaceRecord>, name: string): Promise<void> {
  const e = await lookup.then(() => undefined, (err: unknown) => err);
  expect(e).toBeInstanceOf(TernError);
  expect((e as TernError).kind).toBe("not_found");
  expect((e as TernError).message).toBe(`namespace ${name} not found`);
}

/*
 * Two registries on one database stand for two processes: what one registers, the other
 * reads from the database or, for a name it found missing lately, answers from its cache.
 */
for (const store of await testStores()) {
  describe(`a namespace looked up and not found (${store})`, () => {
    let c: TestCluster;
    /** A registry on the cluster's database, or reading through `db` (the cluster directory reads the database itself). */
    const registry = ({ db, ...o }: { db?: Db; cacheTtlMs?: number; missTtlMs?: number } = {}) =>
      createNamespaceRegistry({ db: db ?? c.server.database.db, clusters: createClusterDirectory(c.server.database.db, c.server.cluster), ...o });

    beforeAll(async () => {
      c = await startTestCluster({ store, name: "clusterN" });
    });
    afterAll(() => c.destroy());

    test("stays not found for a while without a read, then is read again", async () => {
      const looking = registry({ cacheTtlMs: 60_000, missTtlMs: 1_500 });
      const other = registry();
      await missing(looking.getByName("typo-1"), "typo-1");
      await other.register({ name: "typo-1" });
      // Answered from the cache: a read would find it.
      await missing(looking.getByName("typo-1"), "typo-1");
      expect((await looking.describe({ name: "typo-1" })).name).toBe("typo-1");
      expect((await looking.getByName("typo-1")).name).toBe("typo-1");
    });

    // What tells a namespace's first call after a start from a flood of made-up names (interceptors.ts):
    // the flood's refusals ask for it, and it reads at most once per missTtlMs however many ask.
    test("TestNamesAreReadAtMostOncePerMissTtl", async () => {
      const looking = registry({ cacheTtlMs: 60_000, missTtlMs: 60_000 });
      const quick = registry({ missTtlMs: 50 });
      await Promise.all([looking.readNames(), quick.readNames()]);
      await registry().register({ name: "named-later" });
      await looking.readNames();
      expect(looking.known("named-later")).toBe(false);
      await eventually(async () => {
        await quick.readNames();
        expect(quick.known("named-later")).toBe(true);
      });
      expect(quick.known("never-named")).toBe(false);
    });

    test("is read again once the miss is older than missTtlMs", async () => {
      const looking = registry({ cacheTtlMs: 60_000, missTtlMs: 200 });
      await missing(looking.getByName("typo-2"), "typo-2");
      await registry().register({ name: "typo-2" });
      const found = await eventually(() => looking.getByName("typo-2"), { timeout: 5_000 });
      expect(found.name).toBe("typo-2");
    });

    test("a registration or an invalidation here ends the miss at once", async () => {
      const looking = registry({ cacheTtlMs: 60_000, missTtlMs: 60_000 });
      await missing(looking.getByName("typo-3"), "typo-3");
      expect((await looking.register({ name: "typo-3" })).name).toBe("typo-3");
      expect((await looking.getByName("typo-3")).name).toBe("typo-3");

      // As the namespace receiver does when a namespace replicates in.
      await missing(looking.getByName("typo-4"), "typo-4");
      const record = await registry().register({ name: "typo-4" });
      looking.invalidate(record);
      expect((await looking.getByName("typo-4")).name).toBe("typo-4");
    });

    test("a read that began before the namespace was learnt here does not record its miss", async () => {
      // The registry's reads of the namespaces table keep their answer a second after it came.
      const hold = { on: true, ms: 1_000, held: 0 };
      const looking = registry({ db: holdingReads(c.server.database.db, hold, (table) => table === namespaces), cacheTtlMs: 60_000, missTtlMs: 60_000 });
      const first = looking.getByName("typo-6");
      // Its read has run (and found nothing) when the namespace arrives, as a replicated one does.
      await eventually(() => expect(hold.held).toBeGreaterThan(0), { interval: 5 });
      hold.on = false;
      const record = await registry().register({ name: "typo-6" });
      looking.invalidate(record);
      await missing(first, "typo-6");
      expect((await looking.getByName("typo-6")).name).toBe("typo-6");
    });

    test("a miss is never kept longer than a found namespace is (cacheTtlMs)", async () => {
      const looking = registry({ cacheTtlMs: 100, missTtlMs: 60_000 });
      await missing(looking.getByName("typo-5"), "typo-5");
      await registry().register({ name: "typo-5" });
      expect((await eventually(() => looking.getByName("typo-5"), { timeout: 5_000 })).name).toBe("typo-5");
    });
  });
}
