import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createConnectTransport } from "@connectrpc/connect-web";
import { Agent, request } from "node:http";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { startClusterProcess, type ClusterProcess } from "../../scripts/lib/cluster-process";
import { Health, HealthCheckResponse_ServingStatus } from "../../src/gen/grpc/health/v1/health_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { createTestDatabase } from "../support/postgres";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** The entry's grace for open requests after a stop signal (src/entry/boot.ts). */
const GRACE_MS = 5_000;

const connect = (p: ClusterProcess) => createClient(WorkflowService, createConnectTransport({ baseUrl: `http://${p.address}` }));
const healthConnect = (p: ClusterProcess) => createClient(Health, createConnectTransport({ baseUrl: `http://${p.address}` }));

/** The log lines of p with message msg (JSON lines of the server's log). */
const logged = (p: ClusterProcess, msg: string) =>
  readFileSync(p.logPath, "utf8").split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === msg);

/** An HTTP/1.1 answer, with the local port of the connection it came on (the same one: a kept-alive connection reused). */
interface Answer {
  status: number;
  connection: string | undefined;
  body: { code?: string; message?: string };
  localPort: number | undefined;
}

/** A Connect JSON call of WorkflowService's method through agent (node:http: its connections and headers as they are). */
function post(agent: Agent, address: string, method: string, message: object): Promise<Answer> {
  const [host, port] = address.split(":");
  return new Promise((resolve, reject) => {
    const req = request({ host, port: Number(port), agent, method: "POST", path: `/${WorkflowService.typeName}/${method}`, headers: { "content-type": "application/json" } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode!, connection: res.headers.connection, body: JSON.parse(text || "{}"), localPort: req.socket?.localPort }));
    });
    req.on("error", reject);
    req.end(JSON.stringify(message));
  });
}

if ((await testStores()).includes("postgres")) {
  describe("stopping a server: what its clients see, on postgres", () => {
    const dir = mkdtempSync(join(tmpdir(), "drain-stopping-"));
    let db: { url: string; drop(): Promise<void> };
    let sql: postgres.Sql;
    let held: postgres.ReservedSql | undefined;
    const servers: ClusterProcess[] = [];
    beforeAll(async () => {
      db = await createTestDatabase("tern_drain");
      sql = postgres(db.url, { max: 2, onnotice: () => {} });
    });
    afterEach(() => release());
    afterAll(async () => {
      await sql?.end({ timeout: 1 });
      await Promise.all(servers.map((s) => s.stop()));
      await db?.drop();
      rmSync(dir, { recursive: true, force: true });
    });
    async function release(): Promise<void> {
      await held?.unsafe("rollback").catch(() => {});
      held?.release();
      held = undefined;
    }

    /** A server of clusterA (the database's cluster) in a directory of its own. */
    async function start(home: string, shutdownDrainDuration?: string): Promise<ClusterProcess> {
      // No lock timeout: a start held in flight (heldStart) waits as long as the test holds it.
      const p = await startClusterProcess({ name: "clusterA", initialFailoverVersion: 1, dir: join(dir, home), databaseUrl: db.url, lockTimeoutMs: 0, shutdownDrainDuration });
      servers.push(p);
      return p;
    }

    /** A workflow start on p held in flight: another session holds a lock its event insert waits for. */
    async function heldStart(p: ClusterProcess, namespace: string) {
      await connect(p).registerNamespace({ namespace });
      held = await sql.reserve();
      await held.unsafe("begin");
      await held.unsafe("lock table history_events in share mode");
      const write = connect(p).startWorkflowExecution({ namespace, workflowId: "held", workflowType: "t", taskQueue: "q", requestId: "held-1" });
      write.catch(() => {});
      await eventually(async () => {
        const [w] = await sql`select count(*)::int as n from pg_locks l join pg_class c on c.oid = l.relation where c.relname = 'history_events' and not l.granted`;
        expect(w!.n).toBeGreaterThan(0);
      }, { timeout: 20_000 });
      return { write }; // not the promise itself, which the async function would wait for
    }

    test("SIGTERM with shutdownDrainDuration: health NOT_SERVING at once while calls are still served (closing their connections); past the drain a new call gets UNAVAILABLE 'stopping' on HTTP/1.1 and native gRPC, the call in flight completes, then the listener closes", async () => {
      const a = await start("drained", "6s");
      const grpcPort = logged(a, "tern server started")[0]!.grpcPort as number;
      const grpc = createGrpcTransport({ baseUrl: `http://127.0.0.1:${grpcPort}` });
      const { write } = await heldStart(a, "orders");
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      a.terminate();

      // Draining: NOT_SERVING on every health check, the calls served, each answer closing its connection.
      await eventually(async () => expect((await fetch(`http://${a.address}/health`)).status).toBe(503), { timeout: 10_000 });
      expect(logged(a, "drained; refusing new calls")).toEqual([]);
      expect(await (await fetch(`http://${a.address}/health`)).json()).toEqual({ status: "NOT_SERVING" });
      expect((await healthConnect(a).check({})).status).toBe(HealthCheckResponse_ServingStatus.NOT_SERVING);
      expect((await createClient(Health, grpc).check({})).status).toBe(HealthCheckResponse_ServingStatus.NOT_SERVING);
      const served = await post(agent, a.address, "DescribeNamespace", { namespace: "orders" });
      expect([served.status, served.connection]).toEqual([200, "close"]);
      expect((await createClient(WorkflowService, grpc).describeNamespace({ namespace: "orders" })).namespace?.namespaceInfo?.name).toBe("orders");
      expect(logged(a, "drained; refusing new calls")).toEqual([]); // all of that within the drain

      // Past the drain, the start still in flight: new calls refused, retryable, saying why; health still answered.
      await eventually(() => expect(logged(a, "drained; refusing new calls").length).toBe(1), { timeout: 20_000 });
      const refused = await post(agent, a.address, "DescribeNamespace", { namespace: "orders" });
      expect([refused.status, refused.connection, refused.body.code]).toEqual([503, "close", "unavailable"]);
      expect(refused.body.message).toContain("this server is stopping");
      const overGrpc = await createClient(WorkflowService, grpc).describeNamespace({ namespace: "orders" }).catch((e: unknown) => e);
      expect(overGrpc).toBeInstanceOf(ConnectError);
      expect([(overGrpc as ConnectError).code, (overGrpc as ConnectError).rawMessage]).toEqual([Code.Unavailable, expect.stringContaining("this server is stopping")]);
      expect((await createClient(Health, grpc).check({})).status).toBe(HealthCheckResponse_ServingStatus.NOT_SERVING);

      // The call in flight completes once its lock is free; then the listener closes at once (not at the grace's end) and the server exits 0.
      await release();
      expect((await write).runId).not.toBe("");
      const t0 = performance.now();
      expect(await a.stop(30_000)).toBe(0);
      expect(performance.now() - t0).toBeLessThan(GRACE_MS * 0.6);
      agent.destroy();
    });

    test("SIGTERM without a drain (the default): a call sent on a connection kept alive from before, while another is in flight, gets UNAVAILABLE 'stopping', not a reset", async () => {
      const b = await start("undrained");
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      const before = await post(agent, b.address, "DescribeNamespace", { namespace: "nowhere" });
      expect([before.status, before.connection]).toEqual([404, undefined]);
      const { write } = await heldStart(b, "trips");
      b.terminate();
      await eventually(() => expect(logged(b, "stopping").length).toBe(1), { timeout: 10_000 });
      const refused = await post(agent, b.address, "DescribeNamespace", { namespace: "trips" });
      expect(refused.localPort).toBe(before.localPort); // the connection from before the stop
      expect([refused.status, refused.connection, refused.body.code]).toEqual([503, "close", "unavailable"]);
      expect(refused.body.message).toContain("this server is stopping");
      await release();
      expect((await write).runId).not.toBe("");
      expect(await b.stop(30_000)).toBe(0);
      agent.destroy();
    });

    test("SIGTERM ends health Watch streams once new calls are refused, after telling them NOT_SERVING (one of an unknown service too): they do not hold the stop for the grace, cut at its end", async () => {
      const c = await start("watched", "1s");
      const grpcPort = logged(c, "tern server started")[0]!.grpcPort as number;
      const http = createConnectTransport({ baseUrl: `http://${c.address}` });
      const grpc = createGrpcTransport({ baseUrl: `http://127.0.0.1:${grpcPort}` });
      const watchers = ([[http, ""], [grpc, ""], [http, "nope"]] as const).map(async ([transport, service]) => {
        const seen: HealthCheckResponse_ServingStatus[] = [];
        for await (const { status } of createClient(Health, transport).watch({ service })) seen.push(status);
        return seen;
      });
      await eventually(async () => expect((await healthConnect(c).check({})).status).toBe(HealthCheckResponse_ServingStatus.SERVING), { timeout: 10_000 });
      const t0 = performance.now();
      c.terminate();
      const { SERVING, NOT_SERVING, SERVICE_UNKNOWN } = HealthCheckResponse_ServingStatus;
      expect(await Promise.all(watchers)).toEqual([[SERVING, NOT_SERVING], [SERVING, NOT_SERVING], [SERVICE_UNKNOWN]]);
      expect(await c.stop(30_000)).toBe(0);
      expect(performance.now() - t0).toBeLessThan(1_000 + GRACE_MS * 0.6);
    });
  });
}
