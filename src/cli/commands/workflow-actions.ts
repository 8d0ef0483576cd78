import { create } from "@bufbuild/protobuf";
import { FailureSchema } from "../../gen/tern/common/v1/common_pb";
import {
  CompleteWorkflowExecutionResponseSchema,
  FailWorkflowExecutionResponseSchema,
  RecordMarkerResponseSchema,
  RequestCancelWorkflowExecutionResponseSchema,
  SignalWorkflowExecutionResponseSchema,
  TerminateWorkflowExecutionResponseSchema,
} from "../../gen/tern/workflow/v1/service_pb";
import { type FlagSpec, getString, type ParsedArgs, requireString } from "../args";
import type { CommandContext, LeafCommand } from "../command";
import { messageJson } from "../output";
import { jsonPayloads } from "../payload";
import {
  bigintArg,
  CLI_IDENTITY,
  executionArg,
  requestIdArg,
  requestIdFlag,
  runIdFlag,
  workflowIdFlag,
  workflowNamespace,
  workflowNamespaceFlag,
} from "./common-flags";

/** Flags every command on one execution takes. */
const executionFlags: FlagSpec[] = [workflowNamespaceFlag, workflowIdFlag, runIdFlag];

/** The fields every single-execution write shares. */
function target(args: ParsedArgs) {
  return { namespace: workflowNamespace(args), workflowExecution: executionArg(args), requestId: requestIdArg(args) };
}

function describeTarget(args: ParsedArgs): string {
  const runId = getString(args, "run-id");
  return `workflow ${requireString(args, "workflow-id")}${runId ? ` (run ${runId})` : ""}`;
}

/** Prints the response as JSON, or the given line in table mode. */
function done(ctx: CommandContext, json: () => string, line: string): void {
  ctx.out(ctx.format === "json" ? json() : `${line}\n`);
}

const signal: LeafCommand = {
  kind: "leaf",
  name: "signal",
  summary: "Signal a workflow execution",
  flags: [
    ...executionFlags,
    { name: "name", kind: "string", valueName: "NAME", description: "Signal name (required)" },
    { name: "input", alias: "i", kind: "string", valueName: "JSON", description: "Signal input, as JSON text, @FILE or - (standard input)" },
    requestIdFlag,
  ],
  async run(ctx, args) {
    const req = {
      ...target(args),
      signalName: requireString(args, "name"),
      input: jsonPayloads(getString(args, "input"), "input"),
      identity: CLI_IDENTITY,
    };
    const res = await ctx.workflow().signalWorkflowExecution(req, { signal: ctx.signal });
    done(ctx, () => messageJson(SignalWorkflowExecutionResponseSchema, res), `Signaled ${describeTarget(args)}: event ${res.eventId} in run ${res.runId}`);
  },
};

/** --reason of cancel and terminate: optional for both, as in Temporal's CLI (the server takes ""). */
const reasonFlag: FlagSpec = { name: "reason", kind: "string", valueName: "TEXT", description: "Reason (default: none)" };

const cancel: LeafCommand = {
  kind: "leaf",
  name: "cancel",
  summary: "Request cancellation of a workflow execution",
  flags: [...executionFlags, reasonFlag, requestIdFlag],
  async run(ctx, args) {
    const req = { ...target(args), reason: getString(args, "reason") ?? "", identity: CLI_IDENTITY };
    const res = await ctx.workflow().requestCancelWorkflowExecution(req, { signal: ctx.signal });
    done(ctx, () => messageJson(RequestCancelWorkflowExecutionResponseSchema, res), `Requested cancellation of ${describeTarget(args)}`);
  },
};

const terminate: LeafCommand = {
  kind: "leaf",
  name: "terminate",
  summary: "Terminate a workflow execution",
  flags: [
    ...executionFlags,
    reasonFlag,
    { name: "details", kind: "string", valueName: "JSON", description: "Details, as JSON text, @FILE or - (standard input)" },
    requestIdFlag,
  ],
  async run(ctx, args) {
    const req = {
      ...target(args),
      // Optional, as Temporal's: the server takes an empty reason.
      reason: getString(args, "reason") ?? "",
      details: jsonPayloads(getString(args, "details"), "details"),
      identity: CLI_IDENTITY,
    };
    const res = await ctx.workflow().terminateWorkflowExecution(req, { signal: ctx.signal });
    done(ctx, () => messageJson(TerminateWorkflowExecutionResponseSchema, res), `Terminated ${describeTarget(args)}`);
  },
};

const complete: LeafCommand = {
  kind: "leaf",
  name: "complete",
  summary: "Complete a workflow execution with a result",
  flags: [...executionFlags, { name: "result", kind: "string", valueName: "JSON", description: "Result, as JSON text, @FILE or - (standard input)" }, requestIdFlag],
  async run(ctx, args) {
    const req = { ...target(args), result: jsonPayloads(getString(args, "result"), "result") };
    const res = await ctx.workflow().completeWorkflowExecution(req, { signal: ctx.signal });
    done(ctx, () => messageJson(CompleteWorkflowExecutionResponseSchema, res), `Completed ${describeTarget(args)}`);
  },
};

const fail: LeafCommand = {
  kind: "leaf",
  name: "fail",
  summary: "Fail a workflow execution",
  flags: [
    ...executionFlags,
    { name: "reason", kind: "string", valueName: "MESSAGE", description: "Failure message (required)" },
    { name: "failure-type", kind: "string", valueName: "TYPE", description: "Failure type" },
    requestIdFlag,
  ],
  async run(ctx, args) {
    const failure = create(FailureSchema, {
      message: requireString(args, "reason"),
      type: getString(args, "failure-type") ?? "",
    });
    const res = await ctx.workflow().failWorkflowExecution({ ...target(args), failure }, { signal: ctx.signal });
    done(ctx, () => messageJson(FailWorkflowExecutionResponseSchema, res), `Failed ${describeTarget(args)}`);
  },
};

const marker: LeafCommand = {
  kind: "leaf",
  name: "marker",
  summary: "Record a marker event in a workflow execution",
  flags: [
    ...executionFlags,
    { name: "name", kind: "string", valueName: "NAME", description: "Marker name (required)" },
    { name: "details", kind: "string", valueName: "JSON", description: "Details, as JSON text, @FILE or - (standard input)" },
    {
      name: "expected-next-event-id",
      kind: "string",
      valueName: "ID",
      description: "Write only if the run's next event id is this (optimistic check)",
    },
    requestIdFlag,
  ],
  async run(ctx, args) {
    const req = {
      ...target(args),
      markerName: requireString(args, "name"),
      details: jsonPayloads(getString(args, "details"), "details"),
      expectedNextEventId: bigintArg(args, "expected-next-event-id"),
    };
    const res = await ctx.workflow().recordMarker(req, { signal: ctx.signal });
    done(ctx, () => messageJson(RecordMarkerResponseSchema, res), `Recorded marker ${req.markerName} as event ${res.eventId} of ${describeTarget(args)}`);
  },
};

/** The writes on one execution: signal, cancel, terminate, complete, fail, marker. */
export const actionCommands: LeafCommand[] = [signal, cancel, terminate, complete, fail, marker];
