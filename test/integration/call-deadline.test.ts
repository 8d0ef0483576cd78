import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, type Client } from "@connectrpc/connect";
import postgres from "postgres";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { eventually } from "../support/eventually";
import { rejects } from "../support/rejects";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "t", taskQueue: "q" };

/** Registers namespace with one run "w": signal(requestId, timeoutMs?) signals it, signalled() lists its signals' request ids in order. */
async function runToSignal(wf: Client<typeof WorkflowService>, namespace: string, isGlobalNamespace = false) {
  await wf.registerNamespace({ namespace, isGlobalNamespace });
  await wf.startWorkflowExecution({ namespace, workflowId: "w", ...T });
  return {
    signal: (requestId: string, timeoutMs?: number) =>
      wf.signalWorkflowExecution({ namespace, workflowExecution: { workflowId: "w" }, signalName: "s", requestId }, { timeoutMs }),
    async signalled() {
      const { history } = await wf.getWorkflowExecutionHistory({ namespace, execution: { workflowId: "w" } });
      return history!.events.flatMap((e) => (e.attributes.case === "workflowExecutionSignaledEventAttributes" ? [e.attributes.value.requestId] : []));
    },
  };
}

/** A call as a Connect JSON POST with the deadline header alone: the server's deadline ends it, not a timer of the client's. */
const callWithDeadline = async (url: string, method: string, body: unknown, deadlineMs: number) => {
  const res = await fetch(`${url}/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json", "connect-protocol-version": "1", "connect-timeout-ms": String(deadlineMs) },
    body: JSON.stringify(body),
  });
  return ((await res.json()) as { code?: string }).code ?? "ok";
};

// The embedded database has no other session to hold a lock: a signal's commit is held by the
// server's test hook until after the call's deadline, then let go; it rolls back.
describe("a call past its deadline on PGlite", () => {
  let cluster: TestCluster;
  let held: { entered: () => void; release: Promise<void> } | undefined;
  beforeAll(async () => {
    cluster = await startTestCluster({
      store: "pglite",
      serverOptions: {
        beforeCommit: (operation) => {
          if (operation !== "SignalWorkflowExecution" || !held) return;
          held.entered();
          return held.release;
        },
      },
    });
  });
  afterAll(() => cluster.destroy());

  test("TestSignalHeldPastItsDeadline: the client got DEADLINE_EXCEEDED and the signal did not land", async () => {
    const { signal, signalled } = await runToSignal(cluster.client(WorkflowService), "held");
    let entered!: () => void;
    let release!: () => void;
    const inHook = new Promise<void>((r) => (entered = r));
    held = { entered, release: new Promise<void>((r) => (release = r)) };
    const late = callWithDeadline(cluster.url, "tern.workflow.v1.WorkflowService/SignalWorkflowExecution", { namespace: "held", workflowExecution: { workflowId: "w" }, signalName: "s", requestId: "late" }, 300);
    await inHook;
    expect(await late).toBe("deadline_exceeded");
    held = undefined;
    release();
    // PGlite runs one transaction at a time: this one's waits for the held one to end.
    await signal("on-time");
    expect(await signalled()).toEqual(["on-time"]);
  });
});

// A call whose work waits (here for a row another session holds locked) past the call's
// deadline: the client gets DEADLINE_EXCEEDED, the wait ends with the call, not at the lock
// timeout, and the write never lands, even once the lock is free.
if ((await testStores()).includes("postgres")) {
  describe("a call past its deadline on PostgreSQL", () => {
    let cluster: TestCluster;
    let admin: postgres.Sql;
    const logged: { level: string; msg: string; requestId?: string; error?: string }[] = [];
    beforeAll(async () => {
      cluster = await startTestCluster({ store: "postgres", serverOptions: { log: createLogger({ level: "info", write: (line) => logged.push(JSON.parse(line)) }) } });
      admin = postgres(cluster.dataLocation, { max: 2, onnotice: () => {} });
    });
    afterAll(async () => {
      await admin.end({ timeout: 1 });
      await cluster.destroy();
    });

    /** The server's sessions (application_name tern...) that are waiting for a lock, or in a statement or transaction at all. */
    const serverSessions = async () => {
      const [row] = await admin`
        select count(*) filter (where wait_event_type = 'Lock')::int as waiting, count(*) filter (where state <> 'idle')::int as busy
        from pg_stat_activity where datname = current_database() and application_name in ('tern', 'tern-apply')`;
      return row as { waiting: number; busy: number };
    };

    /** Runs fn while another session holds the rows `lock` selects for update; then waits until the server's sessions are idle. */
    async function whileLocked(lock: string, fn: () => Promise<void>): Promise<void> {
      const holder = await admin.reserve();
      try {
        await holder`begin`;
        await holder.unsafe(lock);
        await fn();
        // The server's statement gave up its wait with the call: long before the lock timeout (10 s).
        await eventually(async () => expect((await serverSessions()).waiting).toBe(0), { timeout: 3000 });
      } finally {
        await holder`rollback`;
        holder.release();
      }
      await eventually(async () => expect((await serverSessions()).busy).toBe(0));
    }

    test("TestDeleteNamespacePastItsDeadline: the client got DEADLINE_EXCEEDED, and the namespace and its runs are still there", async () => {
      const wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: "kept" });
      await wf.startWorkflowExecution({ namespace: "kept", workflowId: "w", ...T });
      await whileLocked("select * from namespaces where name = 'kept' for update", async () => {
        expect(await callWithDeadline(cluster.url, "tern.operator.v1.OperatorService/DeleteNamespace", { namespace: "kept" }, 300)).toBe("deadline_exceeded");
      });
      const { namespace } = await wf.describeNamespace({ namespace: "kept" });
      expect(namespace?.namespaceInfo?.name).toBe("kept");
      const { history } = await wf.getWorkflowExecutionHistory({ namespace: "kept", execution: { workflowId: "w" } });
      expect(history!.events.length).toBe(1);
    });

    test("TestOneStatementSignalPastItsDeadline: sent before the deadline, it is its own COMMIT: it lands once the lock is free, once, and its retry with the same request id finds it", async () => {
      const { signal, signalled } = await runToSignal(cluster.client(WorkflowService), "signals", true);
      const holder = await admin.reserve();
      try {
        await holder`begin`;
        await holder.unsafe("select * from executions where workflow_id = 'w' for update");
        // From the run's row this server kept: one statement, sent at once, waiting for the lock.
        await rejects(signal("late", 300), Code.DeadlineExceeded, "");
        // Not cancelled, a second after the deadline: that would need a connection held for each
        // write (writer.ts, transactOneStatement). The window is the assertion.
        await new Promise((r) => setTimeout(r, 1_000));
        expect((await serverSessions()).waiting).toBe(1);
      } finally {
        await holder`rollback`;
        holder.release();
      }
      // It landed once the lock was free, though its caller had DEADLINE_EXCEEDED.
      await eventually(async () => expect(await signalled()).toEqual(["late"]));
      await signal("late"); // the client's retry after DEADLINE_EXCEEDED, with the same request id: found, not written again
      expect(await signalled()).toEqual(["late"]);
    });

    // Found by the failover soak (test/failover/chaos.test.ts) under load: a replication apply
    // had written the run in between, and the server logged an ERROR "internal error" (a
    // StaleRunError) for a call whose client had its DEADLINE_EXCEEDED long before.
    test("TestOneStatementSignalFindingItsRunChangedPastItsDeadline: no internal error, nothing written, and its retry lands once", async () => {
      const { signal, signalled } = await runToSignal(cluster.client(WorkflowService), "stale", true);
      const holder = await admin.reserve();
      try {
        await holder`begin`;
        // Another writer of the run (a replication apply, another server on this database): its row moves on under the lock.
        await holder`update executions set db_version = db_version + 1 where workflow_id = 'w' and namespace_id = (select id from namespaces where name = 'stale')`;
        // From the row this server kept: one statement, sent at once, waiting for the lock.
        await rejects(signal("late", 300), Code.DeadlineExceeded, "");
        await eventually(async () => expect((await serverSessions()).waiting).toBe(1));
        await holder`commit`;
      } finally {
        holder.release();
      }
      // Its statement found the row changed once the lock was free, after the deadline.
      await eventually(async () => expect((await serverSessions()).busy).toBe(0));
      expect(logged.filter((l) => l.level === "error").map((l) => `${l.msg}: ${l.error?.split("\n")[0]}`)).toEqual([]);
      expect(await signalled()).toEqual([]);
      await signal("late"); // the client's retry after DEADLINE_EXCEEDED, with the same request id
      expect(await signalled()).toEqual(["late"]);
    });
  });
}
