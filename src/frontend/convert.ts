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
      forced: f.forced,
      fromFailoverVersion: f.fromVersion === undefined ? undefined : BigInt(f.fromVersion),
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

/** The longest span a request may give (100 years): every time it leads to stays a storable timestamp. */
const MAX_DURATION_SECONDS = 100n * 365n * 24n * 3600n;

/**
 * A Duration in whole milliseconds (undefined: fallback), a fraction of one rounded up: a
 * positive span under 1 ms read as 0, and an execution timeout of 0 is none (a run asked to
 * time out after 0.5 ms never did). Negative spans and spans over 100 years are refused.
 */
export function durationMs(d: Duration | undefined, what: string, fallback = 0): number {
  if (!d) return fallback;
  if (d.seconds > MAX_DURATION_SECONDS) throw invalidArgument(`${what} must be at most 100 years`);
  if (d.seconds < 0n || (d.seconds === 0n && d.nanos < 0)) throw invalidArgument(`${what} must not be negative`);
  return Number(d.seconds) * 1000 + Math.ceil(d.nanos / 1e6);
}

/**
 * An int64 of a request (an event or task id) as a number, refused when a number cannot hold
 * it exactly (beyond 2^53 - 1): rounded, it would name another event or task.
 */
export function exactNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) {
    throw invalidArgument(`${what} ${v} is out of range: at most ${Number.MAX_SAFE_INTEGER}`);
  }
  return Number(v);
}

/** The seconds of 0001-01-01 and 9999-12-31T23:59:59Z, the range of a valid protobuf Timestamp. */
const TIMESTAMP_SECONDS = { min: -62_135_596_800n, max: 253_402_300_799n };

/**
 * A Timestamp as a Date, or undefined; one outside a Timestamp's range (0001 to 9999) is refused.
 * The JSON form checks the range, the binary one does not: 10^15 seconds made an Invalid Date,
 * whose toISOString threw in the query builder, an INTERNAL error.
 */
export function dateOf(t: Timestamp | undefined, what: string): Date | undefined {
  if (!t) return undefined;
  if (t.seconds < TIMESTAMP_SECONDS.min || t.seconds > TIMESTAMP_SECONDS.max || t.nanos < 0 || t.nanos > 999_999_999) {
    throw invalidArgument(`${what} must be a time from 0001-01-01 to 9999-12-31 (seconds ${t.seconds}, nanos ${t.nanos})`);
  }
  return timestampDate(t);
}
