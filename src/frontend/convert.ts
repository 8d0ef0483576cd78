import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate, timestampDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { WorkflowExecutionStatus } from "../gen/tern/common/v1/common_pb";
import { NamespaceDescriptionSchema, NamespaceState, ReplicationState, type NamespaceDescription } from "../gen/tern/workflow/v1/namespace_pb";
import { WorkflowExecutionInfoSchema, type WorkflowExecutionInfo } from "../gen/tern/workflow/v1/service_pb";
import { invalidArgument } from "../errors";
import type { ExecutionRow } from "../history/execution-store";
import type { NamespaceRecord } from "../namespace/registry";

/** A namespace record as the API's NamespaceDescription. */
export function namespaceToProto(ns: NamespaceRecord): NamespaceDescription {
  return create(NamespaceDescriptionSchema, {
    namespaceInfo: {
      id: ns.id,
      name: ns.name,
      state: NamespaceState[ns.state as keyof typeof NamespaceState] ?? NamespaceState.UNSPECIFIED,
      description: ns.description,
      ownerEmail: ns.ownerEmail,
      data: ns.data,
    },
    config: { workflowExecutionRetentionTtl: durationFromMs(ns.retentionSeconds * 1000) },
    replicationConfig: {
      activeClusterName: ns.activeClusterName,
      clusters: ns.clusters,
      state: ReplicationState[ns.replicationState as keyof typeof ReplicationState] ?? ReplicationState.UNSPECIFIED,
    },
    isGlobalNamespace: ns.isGlobal,
    failoverVersion: BigInt(ns.failoverVersion),
    configVersion: BigInt(ns.configVersion),
    failoverHistory: ns.failoverHistory.map((f) => ({
      failoverTime: timestampFromDate(new Date(f.time)),
      failoverVersion: BigInt(f.version),
      fromCluster: f.from,
      toCluster: f.to,
    })),
    createTime: timestampFromDate(ns.createdAt),
    updateTime: timestampFromDate(ns.updatedAt),
  });
}

/** An execution row as the API's WorkflowExecutionInfo. */
export function executionToProto(run: ExecutionRow): WorkflowExecutionInfo {
  return create(WorkflowExecutionInfoSchema, {
    execution: { workflowId: run.workflowId, runId: run.runId },
    workflowType: run.workflowType,
    taskQueue: run.taskQueue,
    status: statusToProto(run.status),
    startTime: timestampFromDate(run.startTime),
    closeTime: run.closeTime ? timestampFromDate(run.closeTime) : undefined,
    historyLength: BigInt(run.nextEventId - 1),
    workflowExecutionTimeout: run.executionTimeoutMs > 0 ? durationFromMs(run.executionTimeoutMs) : undefined,
    cancelRequested: run.cancelRequested,
  });
}

/** Stored status name to the enum. */
export function statusToProto(status: string): WorkflowExecutionStatus {
  return WorkflowExecutionStatus[status as keyof typeof WorkflowExecutionStatus] ?? WorkflowExecutionStatus.UNSPECIFIED;
}

/** The enum to the stored status name; UNSPECIFIED is no filter. */
export function statusFromProto(status: WorkflowExecutionStatus): string | undefined {
  if (status === WorkflowExecutionStatus.UNSPECIFIED) return undefined;
  const name = WorkflowExecutionStatus[status];
  if (!name) throw invalidArgument(`unknown workflow execution status ${status}`);
  return name;
}

/** A Duration in whole milliseconds (undefined: fallback); negative spans are refused. */
export function durationMs(d: Duration | undefined, what: string, fallback = 0): number {
  if (!d) return fallback;
  const ms = Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
  if (ms < 0) throw invalidArgument(`${what} must not be negative`);
  return ms;
}

/** A Timestamp as a Date, or undefined. */
export const dateOf = (t: Timestamp | undefined) => (t ? timestampDate(t) : undefined);
