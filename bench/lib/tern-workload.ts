import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";

/** A Connect client of a tern server's WorkflowService (binary protobuf over fetch). */
export type TernClient = Client<typeof WorkflowService>;

export const createTernClient = (baseUrl: string): TernClient =>
  createClient(WorkflowService, createConnectTransport({ baseUrl, useBinaryFormat: true }));

const utf8 = new TextEncoder();
/** A small JSON payload, the size of a typical signal argument. */
const PAYLOAD = {
  payloads: [{ metadata: { encoding: utf8.encode("json/plain") }, data: utf8.encode('{"orderId":"o-123456","qty":1}') }],
};

/** Registers a local namespace for one bench run and returns its name. */
export async function registerBenchNamespace(client: TernClient, name: string): Promise<string> {
  await client.registerNamespace({ namespace: name, workflowExecutionRetentionPeriod: { seconds: 86_400n } });
  return name;
}

/** Starts one workflow; a fresh request id each time, like an SDK. */
export async function startWorkflow(client: TernClient, namespace: string, workflowId: string): Promise<string> {
  const res = await client.startWorkflowExecution({
    namespace,
    workflowId,
    workflowType: "BenchWorkflow",
    taskQueue: "bench",
    input: PAYLOAD,
    requestId: crypto.randomUUID(),
    identity: "bench",
  });
  return res.runId;
}

/** Signals a workflow's current run with a fresh request id (so the request-id row is written). */
export async function signalWorkflow(client: TernClient, namespace: string, workflowId: string): Promise<void> {
  await client.signalWorkflowExecution({
    namespace,
    workflowExecution: { workflowId, runId: "" },
    signalName: "bench",
    input: PAYLOAD,
    requestId: crypto.randomUUID(),
    identity: "bench",
  });
}

/**
 * The workflow ids a signal phase targets: at least `min`, a multiple of `clients`, so
 * client c owns ids c, c+clients, ... and no two clients wait on one run's row lock.
 */
export function signalTargets(prefix: string, clients: number, min = 64): string[] {
  const count = Math.ceil(Math.max(min, clients) / clients) * clients;
  return Array.from({ length: count }, (_, i) => `${prefix}-${i}`);
}

/** The target of client c's seq-th signal: round robin over the ids it owns. */
export function targetOf(targets: readonly string[], clients: number, client: number, seq: number): string {
  const owned = targets.length / clients;
  return targets[client + (seq % owned) * clients]!;
}
