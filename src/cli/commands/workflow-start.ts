import { WorkflowIdReusePolicy } from "../../gen/tern/common/v1/common_pb";
import {
  SignalWithStartWorkflowExecutionResponseSchema,
  StartWorkflowExecutionResponseSchema,
} from "../../gen/tern/workflow/v1/service_pb";
import { type FlagSpec, getString, type ParsedArgs, requireString } from "../args";
import type { CommandContext, LeafCommand } from "../command";
import { parseDuration } from "../duration";
import { UsageError } from "../errors";
import { formatKeyValues, messageJson } from "../output";
import { jsonPayloads } from "../payload";
import {
  CLI_IDENTITY,
  requestIdArg,
  requestIdFlag,
  workflowIdFlag,
  workflowNamespace,
  workflowNamespaceFlag,
} from "./common-flags";

const REUSE_POLICIES: Record<string, WorkflowIdReusePolicy> = {
  allowduplicate: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
  allowduplicatefailedonly: WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
  rejectduplicate: WorkflowIdReusePolicy.REJECT_DUPLICATE,
  terminateifrunning: WorkflowIdReusePolicy.TERMINATE_IF_RUNNING,
};

/** Parses --id-reuse-policy; accepts kebab-case and Temporal's PascalCase spellings. */
export function parseReusePolicy(text: string | undefined): WorkflowIdReusePolicy {
  if (text === undefined) return WorkflowIdReusePolicy.UNSPECIFIED;
  const policy = REUSE_POLICIES[text.toLowerCase().replace(/[^a-z]/g, "")];
  if (policy === undefined) {
    throw new UsageError(
      `--id-reuse-policy must be allow-duplicate, allow-duplicate-failed-only, reject-duplicate or terminate-if-running, got "${text}"`,
    );
  }
  return policy;
}

/** The flags of `workflow start`, shared with signal-with-start. */
export const startFlags: FlagSpec[] = [
  workflowNamespaceFlag,
  workflowIdFlag,
  { name: "type", kind: "string", valueName: "TYPE", description: "Workflow type (required)" },
  { name: "task-queue", alias: "t", kind: "string", valueName: "QUEUE", description: "Task queue", defaultText: "default" },
  { name: "input", alias: "i", kind: "string", valueName: "JSON", description: "Input, as JSON text, @FILE or - (standard input)" },
  { name: "execution-timeout", kind: "string", valueName: "DURATION", description: "Execution timeout, e.g. 30s or 1h (default: none)" },
  requestIdFlag,
  {
    name: "id-reuse-policy",
    kind: "string",
    valueName: "POLICY",
    description: "allow-duplicate, allow-duplicate-failed-only, reject-duplicate or terminate-if-running (default: server's)",
  },
];

/** The request fields start and signal-with-start share. */
export function startFields(args: ParsedArgs) {
  const timeout = getString(args, "execution-timeout");
  return {
    namespace: workflowNamespace(args),
    workflowId: requireString(args, "workflow-id"),
    workflowType: requireString(args, "type"),
    taskQueue: getString(args, "task-queue") || "default",
    input: jsonPayloads(getString(args, "input"), "input"),
    workflowExecutionTimeout: timeout === undefined ? undefined : parseDuration(timeout, "execution-timeout"),
    requestId: requestIdArg(args),
    workflowIdReusePolicy: parseReusePolicy(getString(args, "id-reuse-policy")),
    identity: CLI_IDENTITY,
  };
}

function printStarted(ctx: CommandContext, fields: ReturnType<typeof startFields>, runId: string, started: boolean) {
  ctx.out(
    formatKeyValues([
      ["WorkflowId", fields.workflowId],
      ["RunId", runId],
      ["Type", fields.workflowType],
      ["Namespace", fields.namespace],
      ["TaskQueue", fields.taskQueue],
      ["Started", started ? "true" : "false (an earlier request with the same request id started it)"],
    ]),
  );
}

const start: LeafCommand = {
  kind: "leaf",
  name: "start",
  summary: "Start a workflow execution",
  flags: startFlags,
  async run(ctx, args) {
    const fields = startFields(args);
    const res = await ctx.workflow().startWorkflowExecution(fields, { signal: ctx.signal });
    if (ctx.format === "json") return ctx.out(messageJson(StartWorkflowExecutionResponseSchema, res));
    printStarted(ctx, fields, res.runId, res.started);
  },
};

const signalWithStart: LeafCommand = {
  kind: "leaf",
  name: "signal-with-start",
  summary: "Signal a workflow, starting it first if it is not running",
  flags: [
    ...startFlags,
    { name: "signal-name", kind: "string", valueName: "NAME", description: "Signal name (required; --name also works)" },
    { name: "name", kind: "string", valueName: "NAME", description: "Alias of --signal-name" },
    { name: "signal-input", kind: "string", valueName: "JSON", description: "Signal input, as JSON text, @FILE or - (standard input)" },
  ],
  async run(ctx, args) {
    const fields = startFields(args);
    const signalName = getString(args, "signal-name") || getString(args, "name");
    if (!signalName) throw new UsageError("--signal-name is required");
    const res = await ctx.workflow().signalWithStartWorkflowExecution(
      { ...fields, signalName, signalInput: jsonPayloads(getString(args, "signal-input"), "signal-input") },
      { signal: ctx.signal },
    );
    if (ctx.format === "json") return ctx.out(messageJson(SignalWithStartWorkflowExecutionResponseSchema, res));
    printStarted(ctx, fields, res.runId, res.started);
  },
};

/** `workflow start` and `workflow signal-with-start`. */
export const startCommands: LeafCommand[] = [start, signalWithStart];
