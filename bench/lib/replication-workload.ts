import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";

/** Connect clients of one cluster (binary protobuf over fetch). */
export interface ClusterClients {
  workflow: Client<typeof WorkflowService>;
  operator: Client<typeof OperatorService>;
}

export function clusterClients(address: string): ClusterClients {
  const transport = createConnectTransport({ baseUrl: `http://${address}`, useBinaryFormat: true });
  return { workflow: createClient(WorkflowService, transport), operator: createClient(OperatorService, transport) };
}

/** A signal the active cluster acknowledged: where it says the event landed. */
export interface AckedSignal {
  workflowId: string;
  runId: string;
  eventId: number;
}

const utf8 = new TextEncoder();
const PAYLOAD = {
  payloads: [{ metadata: { encoding: utf8.encode("json/plain") }, data: utf8.encode('{"orderId":"o-123456","qty":1}') }],
};

/** How many signals each workflow takes before the client starts a fresh one. */
export const SIGNALS_PER_RUN = 20;

/**
 * Starts and signals: client c's op seq starts workflow `<prefix>-c<c>-<k>` every
 * SIGNALS_PER_RUN + 1 ops and signals its current one otherwise, so runs never share
 * a row lock across clients. Acked signals are recorded when `acked` is given.
 */
export function writeOp(clients: ClusterClients, namespace: string, prefix: string, acked?: AckedSignal[]) {
  return async (client: number, seq: number): Promise<void> => {
    const k = Math.floor(seq / (SIGNALS_PER_RUN + 1));
    const workflowId = `${prefix}-c${client}-${k}`;
    if (seq % (SIGNALS_PER_RUN + 1) === 0) {
      await clients.workflow.startWorkflowExecution({
        namespace, workflowId, workflowType: "BenchWorkflow", taskQueue: "bench", input: PAYLOAD, requestId: crypto.randomUUID(), identity: "bench",
      });
      return;
    }
    const res = await clients.workflow.signalWorkflowExecution({
      namespace, workflowExecution: { workflowId, runId: "" }, signalName: "bench", input: PAYLOAD, requestId: crypto.randomUUID(), identity: "bench",
    });
    acked?.push({ workflowId, runId: res.runId, eventId: Number(res.eventId) });
  };
}
