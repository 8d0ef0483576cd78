import { Code, ConnectError } from "@connectrpc/connect";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { json } from "../support/payload";
import type { TestCluster } from "../support/server";

/** A write a client saw acknowledged, with what the answer said. */
export interface Ack {
  kind: "start" | "signal";
  client: number;
  requestId: string;
  workflowId: string;
  /** The cluster that answered it. */
  on: string;
  runId: string;
  /** The signal's event id in the answer (1 for a start). */
  eventId: bigint;
  attempts: number;
}

export interface LoadOptions {
  namespace: string;
  /** The clusters as they are now (a restart replaces one). */
  clusters: () => TestCluster[];
  clients: number;
  /** Workflows each client starts before it signals. */
  workflowsPerClient: number;
  seed: number;
  rng: () => number;
  callMs?: number;
  /** How often a client sends to a cluster picked at random instead (forwarded if the policy says so). */
  strayRate?: number;
  /** A client's pause between writes, so a step's few seconds hold some hundreds of writes, not thousands. */
  thinkMs?: number;
}

/** Codes a client retries with the same request id, as the errors' messages say to. */
const RETRYABLE = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.Aborted, Code.ResourceExhausted, Code.Canceled, Code.Unknown]);

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Writers of starts and signals to one global namespace, each sending one write at a time to
 * the cluster it believes active and retrying every retryable failure with the same request id
 * until it is acknowledged. stop() lets each finish the write it holds and returns.
 */
export function startLoad(o: LoadOptions) {
  const acks: Ack[] = [];
  /** Answers a client was not told to retry (INTERNAL, INVALID_ARGUMENT...): findings. */
  const unexpected: string[] = [];
  const started: string[] = [];
  const invoked = new Set<string>();
  let stopping = false;
  /** The write each client holds, to say which are stuck at the end. */
  const holding = new Map<number, string>();

  async function send(client: number, kind: Ack["kind"], workflowId: string, requestId: string, believed: { name: string }): Promise<Ack> {
    for (let attempts = 1; ; attempts++) {
      const all = o.clusters();
      const x = o.rng() < (o.strayRate ?? 0) ? all[Math.floor(o.rng() * all.length)]! : (all.find((c) => c.name === believed.name) ?? all[0]!);
      const wf = x.client(WorkflowService);
      try {
        if (kind === "start") {
          const res = await wf.startWorkflowExecution({ namespace: o.namespace, workflowId, workflowType: "order", taskQueue: "q", requestId }, { timeoutMs: o.callMs ?? 3_000 });
          return { kind, client, requestId, workflowId, on: x.name, runId: res.runId, eventId: 1n, attempts };
        }
        const res = await wf.signalWorkflowExecution(
          { namespace: o.namespace, workflowExecution: { workflowId }, signalName: "chaos", input: json(requestId), requestId },
          { timeoutMs: o.callMs ?? 3_000 },
        );
        return { kind, client, requestId, workflowId, on: x.name, runId: res.runId, eventId: res.eventId, attempts };
      } catch (e) {
        const err = ConnectError.from(e);
        const active = /is active in cluster (\w+)/.exec(err.rawMessage)?.[1];
        if (err.code === Code.FailedPrecondition && active) believed.name = active;
        else if (err.code === Code.FailedPrecondition && /HANDOVER|failing over/i.test(err.rawMessage)) await pause(50);
        // A signal to a run the cluster has not received yet, or a start it took on the other side.
        else if (err.code === Code.NotFound) await pause(100);
        else if (RETRYABLE.has(err.code)) await pause(50);
        else {
          unexpected.push(`${kind} ${requestId} to ${workflowId} on ${x.name}: ${Code[err.code]}: ${err.rawMessage}`);
          await pause(200);
        }
      }
    }
  }

  async function client(c: number): Promise<void> {
    const believed = { name: o.clusters()[0]!.name };
    for (let n = 0; !stopping; n++) {
      const requestId = `chaos-${o.seed}-c${c}-${n}`;
      const own = n < o.workflowsPerClient;
      const workflowId = own ? `wf-c${c}-${n}` : started[Math.floor(o.rng() * started.length)];
      if (!workflowId) break;
      if (own) invoked.add(workflowId);
      holding.set(c, `${own ? "start" : "signal"} ${requestId} to ${workflowId}`);
      const ack = await send(c, own ? "start" : "signal", workflowId, requestId, believed);
      holding.delete(c);
      acks.push(ack);
      if (own) started.push(workflowId);
      await pause(o.thinkMs ?? 20);
    }
  }

  const running = Promise.all(Array.from({ length: o.clients }, (_, c) => client(c)));
  return {
    acks,
    unexpected,
    started,
    /** Workflows whose start was sent, acknowledged or not. */
    invoked,
    holding,
    async stop(): Promise<void> {
      stopping = true;
      await running;
    },
  };
}

export type Load = ReturnType<typeof startLoad>;
