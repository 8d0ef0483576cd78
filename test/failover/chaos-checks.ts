import { AdminService, type ListHistoryBranchesResponse } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowExecutionStatus, type HistoryEvent } from "../../src/gen/tern/common/v1/common_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { versionBreaches } from "../conflict/support";
import type { TestCluster } from "../support/server";
import type { Ack } from "./chaos-load";

/** A forced failover: the version it took and what its target held right after it. */
export interface Forced {
  target: string;
  version: bigint;
  /** eventKey of every event on the target's current runs right after the switch. */
  seen: Set<string>;
  /**
   * The target's copy was behind a failover another cluster had made (its version below the
   * highest any cluster held): its own version may lose to that one once the links heal, and the
   * writes it took be re-applied on the winning branch.
   */
  stale: boolean;
}

/** The request id a start or signal event carries ("" for other events). */
export function requestIdOf(e: HistoryEvent): string {
  const a = e.attributes;
  return a.case === "workflowExecutionSignaledEventAttributes" || a.case === "workflowExecutionStartedEventAttributes" ? a.value.requestId : "";
}

/** An event as written once: where it is, at which version, for which request. */
export const eventKey = (workflowId: string, runId: string, e: Pick<HistoryEvent, "eventId" | "version">, requestId: string) =>
  `${workflowId}/${runId}/${e.eventId}@${e.version}/${requestId}`;

/** The current run of a workflow on x: its id, status, events and version history. */
export async function currentRun(x: TestCluster, namespace: string, workflowId: string) {
  const wf = x.client(WorkflowService);
  const described = await wf.describeWorkflowExecution({ namespace, execution: { workflowId } });
  const runId = described.workflowExecutionInfo!.execution!.runId;
  const res = await wf.getWorkflowExecutionHistory({ namespace, execution: { workflowId, runId }, maximumPageSize: 100_000 });
  return { runId, status: described.workflowExecutionInfo!.status, events: res.history!.events, versionHistory: described.versionHistory };
}

/** eventKey of every event of x's current runs of the workflows (the ones x does not hold yet are left out). */
export async function snapshot(x: TestCluster, namespace: string, workflowIds: Iterable<string>): Promise<Set<string>> {
  const seen = new Set<string>();
  for (const workflowId of workflowIds) {
    const run = await currentRun(x, namespace, workflowId).catch(() => undefined);
    for (const e of run?.events ?? []) seen.add(eventKey(workflowId, run!.runId, e, requestIdOf(e)));
  }
  return seen;
}

type Branches = ListHistoryBranchesResponse;

/** The version the acknowledged write was written at: its event on any branch of the cluster that answered. */
async function writtenAt(x: TestCluster, namespace: string, ack: Ack, cache: Map<string, Promise<Branches>>): Promise<bigint | undefined> {
  const key = `${x.name}/${ack.workflowId}/${ack.runId}`;
  if (!cache.has(key)) cache.set(key, x.client(AdminService).listHistoryBranches({ namespace, workflowId: ack.workflowId, runId: ack.runId }));
  const res = await cache.get(key)!;
  for (const branch of res.branches) {
    const e = branch.events.find((ev) => ev.eventId === ack.eventId);
    if (e && requestIdOf(e) === ack.requestId) return e.version;
  }
  return undefined;
}

/** One line per event, as every cluster must show it. */
const line = (e: HistoryEvent) => `${e.eventId}@${e.version} ${e.eventType} ${requestIdOf(e)}`;

/**
 * What the record of acknowledged writes says must hold and does not (DESIGN.md sections 4-5):
 * every acknowledged write is on every cluster's current run exactly once; one that no forced
 * failover put at risk (the failover's target held it, or it was written at a version above the
 * failover's, and not at the version of one made on a stale copy) is where its answer said, at the version it was written at; current runs are the
 * same everywhere, open, with event ids 1, 2, 3... and versions that never decrease.
 */
export async function violations(clusters: TestCluster[], namespace: string, acks: Ack[], forced: Forced[], workflowIds: string[], stats = { atRisk: 0 }): Promise<string[]> {
  stats.atRisk = 0;
  const out: string[] = [];
  const runs = new Map<string, Map<string, Awaited<ReturnType<typeof currentRun>>>>();
  for (const x of clusters) {
    const mine = new Map<string, Awaited<ReturnType<typeof currentRun>>>();
    runs.set(x.name, mine);
    for (const workflowId of workflowIds) {
      try {
        const run = await currentRun(x, namespace, workflowId);
        mine.set(workflowId, run);
        out.push(...versionBreaches(run.events, run.versionHistory).map((b) => `${x.name} ${workflowId}: ${b}`));
        if (run.status !== WorkflowExecutionStatus.RUNNING) out.push(`${x.name} ${workflowId}: current run ${run.runId} is ${WorkflowExecutionStatus[run.status]}, not RUNNING`);
      } catch (e) {
        out.push(`${x.name} ${workflowId}: unreadable: ${(e as Error).message}`);
      }
    }
  }
  const [first, ...rest] = clusters;
  for (const workflowId of workflowIds) {
    const a = runs.get(first!.name)!.get(workflowId);
    for (const y of rest) {
      const b = runs.get(y.name)!.get(workflowId);
      if (!a || !b) continue;
      if (a.runId !== b.runId) out.push(`${workflowId}: current run ${a.runId} on ${first!.name}, ${b.runId} on ${y.name}`);
      else if (a.events.map(line).join("\n") !== b.events.map(line).join("\n")) out.push(`${workflowId}: ${first!.name} and ${y.name} hold different events of run ${a.runId}`);
    }
  }
  const branches = new Map<string, Promise<Branches>>();
  for (const ack of acks) {
    const answered = clusters.find((x) => x.name === ack.on)!;
    const version = await writtenAt(answered, namespace, ack, branches).catch(() => undefined);
    if (version === undefined) {
      out.push(`${ack.kind} ${ack.requestId}: answered by ${ack.on} as ${ack.workflowId}/${ack.runId} event ${ack.eventId}, which no branch there holds`);
      continue;
    }
    const key = eventKey(ack.workflowId, ack.runId, { eventId: ack.eventId, version }, ack.requestId);
    // At risk: held by no later forced failover's target, or taken by a forced failover made on a stale copy.
    const atRisk = forced.some((f) => (f.version > version && !f.seen.has(key)) || (f.stale && f.version === version));
    if (atRisk) stats.atRisk++;
    for (const x of clusters) {
      const run = runs.get(x.name)!.get(ack.workflowId);
      if (!run) continue;
      const found = run.events.filter((e) => requestIdOf(e) === ack.requestId);
      if (ack.kind === "signal" && found.length !== 1) out.push(`${x.name}: signal ${ack.requestId} acknowledged by ${ack.on} is on ${ack.workflowId}'s current run ${found.length} times`);
      if (atRisk) continue;
      if (run.runId !== ack.runId) out.push(`${x.name}: ${ack.kind} ${ack.requestId} acknowledged in run ${ack.runId}, no forced failover lost it, but the current run is ${run.runId}`);
      else if (!found.some((e) => eventKey(ack.workflowId, run.runId, e, ack.requestId) === key)) {
        out.push(`${x.name}: ${ack.kind} ${ack.requestId} acknowledged as ${key}, no forced failover lost it, but it is at ${found.map((e) => `${e.eventId}@${e.version}`).join(",") || "nowhere"}`);
      }
    }
  }
  return out;
}
