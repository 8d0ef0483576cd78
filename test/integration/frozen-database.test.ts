import { setDefaultTimeout, afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { Health, HealthCheckResponse_ServingStatus } from "../../src/gen/grpc/health/v1/health_pb";
import { eventually } from "../support/eventually";
import { createTestDatabase } from "../support/postgres";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { startTcpProxyFor, type TcpProxy } from "../support/tcp-proxy";

setDefaultTimeout(30_000);

/** Resolves with what p resolves to and how long it took, ms. */
async function timed<T>(p: Promise<T>): Promise<{ value: T; ms: number }> {
  const started = performance.now();
  const value = await p;
  return { value, ms: performance.now() - started };
}

// A frozen PostgreSQL (SIGSTOP on its processes, or a network that holds every byte) answers
// nothing and closes nothing: here a proxy between the server and its database holds the bytes.
if ((await testStores()).includes("postgres")) {
  describe("a server whose PostgreSQL froze", () => {
    let database: Awaited<ReturnType<typeof createTestDatabase>>;
    let proxy: TcpProxy;
    let cluster: TestCluster;
    beforeAll(async () => {
      database = await createTestDatabase();
      const proxied = await startTcpProxyFor(database.url);
      proxy = proxied.proxy;
      cluster = await startTestCluster({ store: "postgres", dataLocation: proxied.url });
    });
    afterEach(() => proxy.hold(false));
    afterAll(async () => {
      proxy?.hold(false);
      await cluster?.stop();
      await proxy?.close();
      await database?.drop();
    });

    const health = () => fetch(`${cluster.url}/health`).then(async (res) => ({ status: res.status, body: await res.json() }));

    test("HealthAnswersNotServingWhileFrozenAndServingAfter", async () => {
      expect(await health()).toEqual({ status: 200, body: { status: "SERVING" } });
      proxy.hold(true);
      // A checker polling faster than the database answers: each answer within the probe's bound.
      for (let i = 0; i < 3; i++) {
        const [http, grpc] = await Promise.all([timed(health()), timed(cluster.client(Health).check({}))]);
        expect(http.value).toEqual({ status: 503, body: { status: "NOT_SERVING" } });
        expect(grpc.value.status).toBe(HealthCheckResponse_ServingStatus.NOT_SERVING);
        expect(Math.max(http.ms, grpc.ms)).toBeLessThan(3_000);
      }
      proxy.hold(false);
      await eventually(async () => expect(await health()).toEqual({ status: 200, body: { status: "SERVING" } }), { timeout: 5_000 });
      expect((await cluster.client(Health).check({})).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    });
  });
}
