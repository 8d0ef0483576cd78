import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Code, type ConnectError } from "@connectrpc/connect";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { ReplicationState } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { eventually } from "../support/eventually";
import { startLinkedPair } from "../support/linked-pair";
import { awaitedLater, rejects } from "../support/rejects";
import type { TestCluster } from "../support/server";
import { testStores } from "../support/stores";
import type { TcpProxy } from "../support/tcp-proxy";
import { describeOn, expectActiveOn } from "./mesh";
import { answeredWithin, serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "orders";
/**
 * How long B's forwarded calls wait for A past their own work (the server's default is 30 s). At
 * 1 s, a loaded host passed it in a test that does not test it (A's apply seen, then the link cut).
 */
const FORWARD_MS = 5_000;

/** p, or a failure once it has not settled within ms: a call that hangs fails the test, not its timeout. */
function within<T>(ms: number, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)));
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

for (const store of await testStores()) {
  describe(`calls between clusters over a link that drops packets, on ${store}`, () => {
    let a: TestCluster, b: TestCluster;
    let link: TcpProxy;
    let close: () => Promise<void>;
    const bLog: { msg: string; requestId?: string; error?: string }[] = [];
    const signalsOnA = async (workflowId: string) => {
      const h = await a.client(WorkflowService).getWorkflowExecutionHistory({ namespace: NS, execution: { workflowId } });
      return h.history!.events.filter((e) => e.attributes.case === "workflowExecutionSignaledEventAttributes").map((e) => e.eventId);
    };
    /** The signals A holds of the run, by request id: the event id of each. */
    const signalsByRequestOnA = async (workflowId: string) => {
      const h = await a.client(WorkflowService).getWorkflowExecutionHistory({ namespace: NS, execution: { workflowId } });
      return Object.fromEntries(h.history!.events.flatMap((e) => (e.attributes.case === "workflowExecutionSignaledEventAttributes" ? [[e.attributes.value.requestId, e.eventId]] : [])));
    };

    beforeAll(async () => {
      ({ a, b, link, close } = await startLinkedPair(store, [{}, {
        extraYaml: "dcRedirectionPolicy: { policy: selected-apis-forwarding }",
        serverOptions: { forwardTimeoutMs: FORWARD_MS, log: createLogger({ level: "info", write: (line) => bLog.push(JSON.parse(line)) }) },
      }]));
      await a.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId: "w", workflowType: "T", taskQueue: "q" });
    });
    afterAll(() => close());

    test("TestAForwardedSignalWhoseAnswerTheLinkHoldsIsUnavailableInBoundedTimeAndItsRetryWritesOnce", async () => {
      const signal = (requestId: string, timeoutMs?: number) =>
        b.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "w" }, signalName: "paid", requestId }, { timeoutMs });
      // A takes B's requests, but its answers go nowhere (a route lost one way).
      link.stall("toClient", true);
      try {
        // The caller's deadline first, when it has one...
        await rejects(within(answeredWithin(300), signal("sig-0", 300)), Code.DeadlineExceeded, "");
        // ...else B's own bound: retryable, naming the cluster and the request id to retry with.
        await rejects(
          within(answeredWithin(FORWARD_MS), signal("sig-1")),
          Code.Unavailable,
          `cluster clusterA, where namespace ${NS} is active, did not answer the forwarded SignalWorkflowExecution within ${FORWARD_MS} ms ` +
            "(request id sig-1); it may still be applied there: retry with the same request id",
        );
      } finally {
        link.stall("toClient", false);
      }
      // A applied each and answered into the held link, or, on a loaded host, refused it unwritten
      // (it came past its deadline, or never left B by then): A held sig-1 alone after 10 s in 1 of 2
      // runs. The retries once the link is back get what A applied, and write the rest, once.
      const applied = await signalsByRequestOnA("w");
      // Each retried as its refusal says (UNAVAILABLE: B's bound can pass on a loaded host too).
      const retry = async (requestId: string) => (await eventually(() => signal(requestId), { timeout: 20_000 })).eventId;
      const retried = { "sig-0": await retry("sig-0"), "sig-1": await retry("sig-1") };
      expect(retried).toMatchObject(applied);
      expect(await signalsByRequestOnA("w")).toEqual(retried);
      expect(await signalsOnA("w")).toHaveLength(2);
    });

    test("TestAGracefulFailoverOnTheActiveClusterWhileTheLinkIsBlackHoledTimesOutToNormalAndLosesNoWrite", async () => {
      const wf = a.client(WorkflowService);
      const signal = (signalName: string) => wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "w" }, signalName });
      link.hold(true);
      try {
        await signal("unshipped");
        const failing = a.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterB", timeout: { seconds: 1n } });
        // A write during the handover waits it out and lands once the failover gave up.
        const during = signal("during-handover");
        await rejects(within(answeredWithin(1_000), failing), Code.Unavailable, `graceful failover of namespace ${NS} to clusterB timed out after 1000ms`);
        await during;
        const onA = await describeOn(a, NS);
        expect([onA.replicationConfig!.activeClusterName, onA.replicationConfig!.state]).toEqual(["clusterA", ReplicationState.NORMAL]);
      } finally {
        link.hold(false);
      }
      // Both writes reach B once the link is back.
      await eventually(async () => {
        const h = await b.client(WorkflowService).getWorkflowExecutionHistory({ namespace: NS, execution: { workflowId: "w" } });
        expect(h.history!.events.map((e) => e.eventId)).toEqual((await a.client(WorkflowService).getWorkflowExecutionHistory({ namespace: NS, execution: { workflowId: "w" } })).history!.events.map((e) => e.eventId));
      }, { timeout: 15_000 });
      expect((await signalsOnA("w")).length).toBe(4);
    });

    test("TestAForwardedSignalWhoseConnectionIsResetNamesTheRequestIdBMadeUp, in its log too, and its retry with it writes once", async () => {
      const before = await signalsOnA("w");
      const signal = (requestId?: string) => b.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "w" }, signalName: "reset", requestId });
      // A applies the signal (no request id given: B makes one up) and its answer is held; then the connection is reset.
      link.stall("toClient", true);
      let failed: ConnectError;
      try {
        const asked = awaitedLater(signal());
        await eventually(async () => expect(await signalsOnA("w")).toHaveLength(before.length + 1));
        link.cut();
        failed = await rejects(within(10_000, asked), Code.Unavailable, "cannot reach cluster clusterA: ");
      } finally {
        link.stall("toClient", false);
      }
      const requestId = /\(request id (\S+)\); retry with the same request id$/.exec(failed.rawMessage)?.[1];
      expect(requestId).toBeDefined();
      expect(bLog.some((l) => l.msg === "rpc failed" && l.error?.includes(`request id ${requestId}`))).toBe(true);
      // The retry with it gets the first result and writes nothing.
      const applied = (await signalsOnA("w")).at(-1)!;
      expect((await signal(requestId)).eventId).toBe(applied);
      expect(await signalsOnA("w")).toEqual([...before, applied]);
    });

    test("TestAFailoverAskedOfThePassiveClusterOverABlackHoledLinkAnswersInBoundedTimeAndLeavesNoHandover", async () => {
      const failover = () => b.client(OperatorService).failoverNamespace({ namespace: NS, targetCluster: "clusterB", timeout: { seconds: 1n } });
      link.hold(true);
      try {
        const refused = await rejects(
          within(answeredWithin(1_000 + FORWARD_MS), failover()),
          Code.Unavailable,
          `cluster clusterA, where namespace ${NS} is active, did not answer the forwarded FailoverNamespace within ${1_000 + FORWARD_MS} ms (request id `,
        );
        // A retry does not mend an active cluster that is down: what to do then is said.
        expect(refused.rawMessage).toEndWith(
          `; retry; if clusterA is down, no graceful failover can be made: fail over forced, asked of clusterB (tern operator namespace update -n ${NS} --active-cluster clusterB)`,
        );
        // A never heard of it: still active, NORMAL, and taking writes.
        const onA = await describeOn(a, NS);
        expect([onA.replicationConfig!.activeClusterName, onA.replicationConfig!.state]).toEqual(["clusterA", ReplicationState.NORMAL]);
        await a.client(WorkflowService).signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "w" }, signalName: "during" });
      } finally {
        link.hold(false);
      }
      // Retried once the link is back, it goes through, and both clusters agree.
      await eventually(() => failover(), { timeout: 15_000, interval: 200 });
      await expectActiveOn(a, NS, "clusterB", 2n);
      await expectActiveOn(b, NS, "clusterB", 2n);
    });

  });
}
