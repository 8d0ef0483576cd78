import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import postgres from "postgres";
import { startPrivatePostgres } from "../../bench/lib/private-postgres";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { tern } from "../backfill/support";
import { connectAll } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

const remoteB = async (a: TestCluster) => (await a.client(AdminService).getReplicationStatus({})).remotes.find((r) => r.clusterName === "clusterB")!;

// B's PostgreSQL an instance of the test's own, to stop: PostgreSQL only.
describe.if((await testStores()).includes("postgres"))("replication status on A while B's database is down", () => {
  test("TestARemoteWhoseDatabaseIsDownIsSaidToHaveAnsweredSoNotAsThisClustersOwnFailure, and a remote that is down as unreachable", async () => {
    const pg = await startPrivatePostgres();
    cleanups.push(pg.stop);
    const admin = postgres(pg.url("postgres"), { max: 1, onnotice: () => {} });
    await admin`create database tern_b`;
    await admin.end({ timeout: 1 });
    const a = await startTestCluster({ store: "pglite", name: "clusterA", initialFailoverVersion: 1 });
    cleanups.push(() => a.destroy());
    const b = await startTestCluster({ store: "postgres", name: "clusterB", initialFailoverVersion: 2, dataLocation: pg.url("tern_b") });
    cleanups.push(() => b.stop());
    await connectAll([a, b]);
    await eventually(async () => expect(await remoteB(a)).toMatchObject({ connectionState: "connected", inboundLagUnknown: false }), { timeout: 15_000 });

    await pg.crash();
    // B's frontend answers A's calls with its database's failure. Before: "unavailable: the
    // database connection was lost or refused (...)", bare, on A's row for B, as if A's own.
    const answered = /^clusterB answered: unavailable: the database connection was lost or refused \(.*request id \S+\); retry$/;
    const down = await eventually(async () => {
      const row = await remoteB(a);
      expect(row.inboundLagUnknown).toBe(true);
      expect(row.inboundError).toMatch(answered);
      expect(row.connectionState.replace(/^error: /, "")).toMatch(answered);
      return row;
    }, { timeout: 20_000 });
    const status = await tern(a, "replication", "status");
    expect(status.out).toContain(`NOTE: clusterA has heard nothing from clusterB since `);
    expect(status.out).toContain(`: ${down.inboundError}; its inbound lag is unknown`);

    // B itself gone: no answer, said as the connection's failure, naming no answer of B's.
    await b.stop();
    await eventually(async () => expect((await remoteB(a)).inboundError).toBe("connection refused"), { timeout: 20_000 });
  });
});
