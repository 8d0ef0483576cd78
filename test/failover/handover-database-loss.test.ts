import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import postgres from "postgres";
import { startPrivatePostgres } from "../../bench/lib/private-postgres";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { ReplicationState } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { startProxiedCluster } from "../support/proxied-cluster";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { ackGate, addr, describeOn, expectActiveOn } from "./mesh";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

const state = async (x: TestCluster) => (await describeOn(x, "orders")).replicationConfig!.state;
const failover = (x: TestCluster, seconds: number) =>
  x.client(OperatorService).failoverNamespace({ namespace: "orders", targetCluster: "clusterB", timeout: { seconds: BigInt(seconds) } });

// A's PostgreSQL behind a proxy the test cuts: PostgreSQL only.
describe.if((await testStores()).includes("postgres"))("a graceful failover whose database goes away", () => {
  test("TestHandoverLeftOnceTheDatabaseIsBack: a failover that failed with the database gone leaves HANDOVER when it returns, without a restart", async () => {
    const proxied = await startProxiedCluster({ name: "clusterA", initialFailoverVersion: 1 });
    cleanups.push(proxied.close);
    const a = proxied.cluster;
    const { b, acks, answered } = await failoverWaitingInHandover(a);
    // An outage of A's PostgreSQL: the wait's next read fails, and so does leaving HANDOVER at first.
    proxied.proxy.refuse(true);
    proxied.proxy.cut();
    await Bun.sleep(1_500); // the outage lasts past the failover's first attempts to leave HANDOVER
    proxied.proxy.refuse(false);
    const e = await answered;
    expect(e?.message).toContain("retry");
    // Back to NORMAL with the database: writes go through, and the failover can be run again.
    await eventually(async () => expect(await state(a)).toBe(ReplicationState.NORMAL), { timeout: 10_000 });
    await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "after", workflowType: "t", taskQueue: "q" });
    acks.gate.open();
    await failover(a, 20);
    await expectActiveOn(b, "orders", "clusterB", 2n);
    const start = a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "x", workflowType: "t", taskQueue: "q" });
    await rejects(start, Code.FailedPrecondition, "clusterB");
  });

  test("TestFailoverWhosePostgresRestarts: answered as a lost database connection, saying what became of the namespace, not as changed during the failover", async () => {
    // A's PostgreSQL an instance of the test's own, to restart. The failover's lock session ended
    // with the restart: a server of the cluster then reset the HANDOVER it no longer guarded,
    // and the failover answered "changed during the graceful failover" once B caught up.
    const pg = await startPrivatePostgres();
    cleanups.push(pg.stop);
    const admin = postgres(pg.url("postgres"), { max: 1, onnotice: () => {} });
    await admin`create database tern_a`;
    await admin.end({ timeout: 1 });
    const a = await startTestCluster({ store: "postgres", name: "clusterA", initialFailoverVersion: 1, dataLocation: pg.url("tern_a") });
    cleanups.push(() => a.stop());
    const waiting = await failoverWaitingInHandover(a);
    await pg.restart();
    await expectAnsweredAsLost(waiting);
  });

  test("TestFailoverWhoseLockSessionEnds: answered as a lost database connection, not as changed during the failover", async () => {
    // The lock's session alone ended (an operator's pg_terminate_backend): the rest of the pool
    // serves on, and nothing but the lock tells the failover.
    const a = await startTestCluster({ store: "postgres", name: "clusterA", initialFailoverVersion: 1 });
    cleanups.push(() => a.destroy());
    const waiting = await failoverWaitingInHandover(a);
    const admin = postgres(a.dataLocation, { max: 1, onnotice: () => {} });
    cleanups.push(() => admin.end({ timeout: 1 }));
    const [ended] = await admin`select count(pg_terminate_backend(pid))::int as n from pg_stat_activity where datname = current_database() and application_name = 'tern-lock'`;
    expect(ended!.n).toBe(1);
    await expectAnsweredAsLost(waiting);
  });
});

/** clusterB holding its acks, connected to clusterA a, and a's failover of orders to B waiting in HANDOVER. */
async function failoverWaitingInHandover(a: TestCluster) {
  const acks = ackGate();
  const b = await startTestCluster({ store: "postgres", name: "clusterB", initialFailoverVersion: 2, ...acks.options });
  cleanups.push(() => (acks.gate.open(), b.destroy()));
  await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
  await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
  await a.client(WorkflowService).registerNamespace({ namespace: "orders", isGlobalNamespace: true, clusters: ["clusterA", "clusterB"] });
  await eventually(() => describeOn(b, "orders"));
  // B holds its acks and lags behind a write: the failover waits in HANDOVER.
  acks.gate.close();
  await a.client(WorkflowService).startWorkflowExecution({ namespace: "orders", workflowId: "before", workflowType: "t", taskQueue: "q" });
  const answered = failover(a, 30).then(() => undefined, (e: unknown) => ConnectError.from(e));
  await eventually(async () => expect(await state(a)).toBe(ReplicationState.HANDOVER));
  return { a, b, acks, answered };
}

/** The waiting failover, its lock lost, answers so once B catches up; A goes back to NORMAL, and the failover retried goes through. */
async function expectAnsweredAsLost({ a, b, acks, answered }: Awaited<ReturnType<typeof failoverWaitingInHandover>>): Promise<void> {
  acks.gate.open(); // B catches up: the failover would switch now, were its lock still held
  const e = await answered;
  expect(e?.code).toBe(Code.Unavailable);
  expect(e?.rawMessage).toMatch(/^the database connection was lost during the graceful failover of namespace orders to clusterB \(.+\); nothing was switched: orders stays active in clusterA/);
  await eventually(async () => expect(await state(a)).toBe(ReplicationState.NORMAL), { timeout: 10_000 });
  await failover(a, 20);
  await expectActiveOn(b, "orders", "clusterB", 2n);
}
