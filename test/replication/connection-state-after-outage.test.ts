import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { connectAll } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { startProxiedCluster } from "../support/proxied-cluster";
import { startTestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

// B's PostgreSQL behind a proxy the test cuts: PostgreSQL only.
describe.if((await testStores()).includes("postgres"))("a remote's connection state across an outage of this cluster's database", () => {
  test("TestConnectionStateRecoversWithTheDatabase: B's connection to A reads connected again once B's database is back, with no backfill to run", async () => {
    // B's backfill stream reads its jobs every 200 ms (30 s by default), so the outage fails it.
    const lines: { msg: string; stream?: string }[] = [];
    const log = createLogger({ write: (line) => void lines.push(JSON.parse(line)) });
    const proxied = await startProxiedCluster({ name: "clusterB", initialFailoverVersion: 2, serverOptions: { log, replication: { backfillIdleMs: 200 } } });
    cleanups.push(proxied.close);
    const a = await startTestCluster({ store: "postgres", name: "clusterA", initialFailoverVersion: 1 });
    cleanups.push(() => a.destroy());
    const b = proxied.cluster;
    await connectAll([a, b]);
    const state = async () => (await b.client(OperatorService).describeCluster({ clusterName: "clusterA" })).cluster!.connectionState;
    await eventually(async () => expect(await state()).toBe("connected"));

    proxied.proxy.refuse(true);
    proxied.proxy.cut();
    const said = (msg: string) => lines.some((l) => l.msg === msg && l.stream === "backfill");
    await eventually(() => expect(said("replication stream failed")).toBe(true), { timeout: 10_000 });
    proxied.proxy.refuse(false);
    // It stayed "error: connect ECONNREFUSED ..." for good, unrecovered in the log: the backfill
    // stream, with no job to run, never said it was well again.
    await eventually(async () => {
      expect(said("replication stream recovered")).toBe(true);
      expect(await state()).toBe("connected");
    }, { timeout: 10_000 });
  });
});
