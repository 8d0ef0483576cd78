import { describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  EventType,
  HistoryEventSchema,
  WorkflowExecutionStatus,
  WorkflowIdReusePolicy,
} from "../../src/gen/tern/common/v1/common_pb";
import type {
  GetWorkflowExecutionHistoryRequest,
  ListWorkflowExecutionsRequest,
  SignalWithStartWorkflowExecutionRequest,
  StartWorkflowExecutionRequest,
} from "../../src/gen/tern/workflow/v1/service_pb";
import { NamespaceDescriptionSchema } from "../../src/gen/tern/workflow/v1/namespace_pb";
import { runCli } from "./harness";

const text = (b: Uint8Array) => new TextDecoder().decode(b);

function event(id: number, type = EventType.MARKER_RECORDED) {
  return create(HistoryEventSchema, { eventId: BigInt(id), version: 1n, eventType: type });
}

describe("workflow start", () => {
  test("without -n, the default namespace not found says -n/--namespace was left out and names the cluster's namespaces", async () => {
    // Was: 'error: not_found: namespace default not found', nothing on how to choose another.
    const missing = () => {
      throw new ConnectError("namespace default not found", Code.NotFound);
    };
    const listed = (names: string[]) => () => ({ namespaces: names.map((name) => create(NamespaceDescriptionSchema, { namespaceInfo: { name } })) });
    const hint = "error: not_found: namespace default not found (-n/--namespace was left out, so the namespace default was asked): choose one with -n/--namespace NS";
    const some = await runCli(["workflow", "start", "-w", "w", "--type", "T"], { workflow: { startWorkflowExecution: missing, listNamespaces: listed(["orders", "payments"]) } });
    expect([some.code, some.stdout, some.stderr]).toEqual([1, "", `${hint}; this cluster has orders, payments\n`]);
    const none = await runCli(["workflow", "describe", "-w", "w"], { workflow: { describeWorkflowExecution: missing, listNamespaces: listed([]) } });
    expect(none.stderr).toBe(`${hint}; this cluster has none yet ('tern operator namespace create -n NAME')\n`);
    const unlisted = await runCli(["workflow", "start", "-w", "w", "--type", "T"], { workflow: { startWorkflowExecution: missing } });
    expect(unlisted.stderr).toBe(`${hint}\n`);
    // Asked for by name, the error is the server's.
    const named = await runCli(["workflow", "start", "-n", "default", "-w", "w", "--type", "T"], { workflow: { startWorkflowExecution: missing, listNamespaces: listed(["orders"]) } });
    expect(named.stderr).toBe("error: not_found: namespace default not found\n");
  });

  test("sends every field the flags name", async () => {
    let seen: StartWorkflowExecutionRequest | undefined;
    const r = await runCli(
      ["workflow", "start", "-n", "orders", "-w", "order-1", "--type", "OrderFlow", "--input", '{"id": 1}',
        "--execution-timeout", "1m30s", "--request-id", "req-1", "--id-reuse-policy", "reject-duplicate"],
      { workflow: { startWorkflowExecution: (req) => ((seen = req), { runId: "run-1", started: true }) } },
    );
    expect(r.code).toBe(0);
    expect(seen!.namespace).toBe("orders");
    expect(seen!.workflowId).toBe("order-1");
    expect(seen!.workflowType).toBe("OrderFlow");
    expect(seen!.taskQueue).toBe("default");
    expect(seen!.requestId).toBe("req-1");
    expect(seen!.workflowIdReusePolicy).toBe(WorkflowIdReusePolicy.REJECT_DUPLICATE);
    expect(seen!.workflowExecutionTimeout?.seconds).toBe(90n);
    const payload = seen!.input!.payloads[0]!;
    expect(text(payload.metadata["encoding"]!)).toBe("json/plain");
    expect(text(payload.data)).toBe('{"id": 1}');
    expect(r.stdout).toMatch(/^RunId: +run-1$/m);
  });

  test("--id-reuse-policy terminate-if-running, in kebab-case or Temporal's PascalCase, sends TERMINATE_IF_RUNNING", async () => {
    for (const spelling of ["terminate-if-running", "TerminateIfRunning"]) {
      let seen: StartWorkflowExecutionRequest | undefined;
      // Before: a usage error, "--id-reuse-policy must be allow-duplicate, ...".
      const r = await runCli(["workflow", "start", "-w", "w", "--type", "T", "--id-reuse-policy", spelling], {
        workflow: { startWorkflowExecution: (req) => ((seen = req), { runId: "r", started: true }) },
      });
      expect([r.code, seen?.workflowIdReusePolicy]).toEqual([0, WorkflowIdReusePolicy.TERMINATE_IF_RUNNING]);
    }
  });

  test("defaults: namespace default, a fresh request id, no timeout; -o json prints the response", async () => {
    let seen: StartWorkflowExecutionRequest | undefined;
    const r = await runCli(["workflow", "start", "-w", "w", "--type", "T", "-o", "json"], {
      workflow: { startWorkflowExecution: (req) => ((seen = req), { runId: "r", started: false }) },
    });
    expect(seen!.namespace).toBe("default");
    expect(seen!.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(seen!.workflowExecutionTimeout).toBeUndefined();
    expect(seen!.input).toBeUndefined();
    expect(JSON.parse(r.stdout)).toEqual({ runId: "r" });
  });

  test("an empty --namespace is a usage error, not the namespace default", async () => {
    let called = false;
    const r = await runCli(["workflow", "start", "-n", "", "-w", "w", "--type", "T"], {
      workflow: { startWorkflowExecution: () => ((called = true), { runId: "r", started: true }) },
    });
    expect(r.code).toBe(2);
    expect(r.stderr.split("\n")[0]).toBe("error: --namespace is empty (leave it out for the namespace default)");
    expect(called).toBe(false);
  });

  test("invalid --input never reaches the server", async () => {
    let called = false;
    const r = await runCli(["workflow", "start", "-w", "w", "--type", "T", "--input", "{nope"], {
      workflow: { startWorkflowExecution: () => ((called = true), {}) },
    });
    expect(r.code).toBe(2);
    expect(called).toBe(false);
    expect(r.stderr).toContain("--input is not valid JSON");
  });

  test("a JSON flag reads - from standard input and @PATH from a file: a payload past the 128 KiB one argument may hold has no other way in", async () => {
    const inputs: string[] = [];
    const workflow = {
      signalWithStartWorkflowExecution: (req: SignalWithStartWorkflowExecutionRequest) => {
        inputs.push(text(req.input!.payloads[0]!.data), text(req.signalInput!.payloads[0]!.data));
        return { runId: "r" };
      },
    };
    const big = JSON.stringify({ big: "x".repeat(200_000) });
    const fed = { "-": '{"from":"stdin"}\n', "/tmp/in.json": big };
    const ok = await runCli(["workflow", "signal-with-start", "-w", "w", "--type", "T", "--name", "go", "--input", "@/tmp/in.json", "--signal-input", "-"], { workflow, inputs: fed });
    expect([ok.code, ok.stderr]).toEqual([0, ""]);
    expect(inputs).toEqual([big, '{"from":"stdin"}\n']);
    const missing = await runCli(["workflow", "signal", "-w", "w", "--name", "go", "--input", "@/tmp/nope.json"], { workflow, inputs: fed });
    expect([missing.code, missing.stdout, missing.stderr.split("\n")[0]]).toEqual([2, "", "error: --input @/tmp/nope.json: cannot read /tmp/nope.json: ENOENT: no such file or directory"]);
    const twice = await runCli(["workflow", "signal-with-start", "-w", "w", "--type", "T", "--name", "go", "--input", "-", "--signal-input", "-"], { workflow, inputs: fed });
    expect([twice.code, twice.stderr.split("\n")[0]]).toEqual([2, "error: --signal-input - and --input - both read standard input; give one of them @FILE"]);
    expect(inputs).toHaveLength(2);
  });

  test("a file or standard input that starts with a UTF-8 byte-order mark (a Windows editor's) is read without it (refused at line 1, column 1)", async () => {
    const inputs: string[] = [];
    const workflow = { signalWorkflowExecution: (req: { input?: { payloads: { data: Uint8Array }[] } }) => (inputs.push(text(req.input!.payloads[0]!.data)), {}) };
    const fed = { "-": '\uFEFF{"from":"stdin"}', "/tmp/bom.json": '\uFEFF{"from":"file"}\n' };
    for (const value of ["-", "@/tmp/bom.json"]) {
      const r = await runCli(["workflow", "signal", "-w", "w", "--name", "go", "--input", value], { workflow, inputs: fed });
      expect({ value, code: r.code, stderr: r.stderr }).toEqual({ value, code: 0, stderr: "" });
    }
    expect(inputs).toEqual(['{"from":"stdin"}', '{"from":"file"}\n']);
  });

  test("two JSON flags that both read standard input, one as @/dev/stdin, are refused before either is read (the second read an empty input)", async () => {
    let reads = 0;
    const readInput = async () => (reads++, '{"a":1}');
    const workflow = { signalWithStartWorkflowExecution: () => ({ runId: "r" }) };
    const refused = async (...flags: string[]) => {
      const r = await runCli(["workflow", "signal-with-start", "-w", "w", "--type", "T", "--name", "go", ...flags], { workflow, readInput });
      return [r.code, r.stderr.split("\n")[0]];
    };
    expect(await refused("--input", "@/dev/stdin", "--signal-input", "-")).toEqual([2, "error: --signal-input - and --input @/dev/stdin both read standard input; give one of them @FILE"]);
    expect(await refused("--input", "-", "--signal-input", "@/dev/fd/0")).toEqual([2, "error: --signal-input @/dev/fd/0 and --input - both read standard input; give one of them @FILE"]);
    expect(await refused("--input", "@/proc/self/fd/0", "--signal-input", "@/dev/stdin")).toEqual([2, "error: --signal-input @/dev/stdin and --input @/proc/self/fd/0 both read standard input; give one of them @FILE"]);
    expect(reads).toBe(0);
    expect(await refused("--input", "@/dev/stdin", "--signal-input", "@/tmp/x.json")).toEqual([0, ""]);
  });

  test("an empty standard input or file, and an @ with no path, are named as such (they read as JSON's 'Unexpected EOF', or 'cannot read : ENOENT')", async () => {
    const workflow = { signalWorkflowExecution: () => ({}) };
    const said = async (value: string) => {
      const r = await runCli(["workflow", "signal", "-w", "w", "--name", "go", "--input", value], { workflow, inputs: { "-": "", "/tmp/empty.json": "\n" } });
      return [r.code, r.stderr.split("\n")[0]];
    };
    expect(await said("-")).toEqual([2, "error: --input -: standard input is empty"]);
    expect(await said("@/tmp/empty.json")).toEqual([2, "error: --input @/tmp/empty.json: /tmp/empty.json is empty"]);
    expect(await said("@")).toEqual([2, "error: --input @ names no file: write @PATH"]);
  });

  test("show --follow of a run that does not exist writes nothing on stdout, only the error (it wrote the table's header first)", async () => {
    const workflow = { getWorkflowExecutionHistory: () => { throw new ConnectError("workflow execution nosuch not found in namespace default", Code.NotFound); } };
    const r = await runCli(["workflow", "show", "-w", "nosuch", "--follow"], { workflow });
    expect([r.code, r.stdout, r.stderr]).toEqual([1, "", "error: not_found: workflow execution nosuch not found in namespace default\n"]);
  });

  test("Ctrl-C while --input - waits on a standard input that never ends exits 130 at once (it waited for the input's end, then sent it)", async () => {
    const interrupt = new AbortController();
    let reads = 0;
    const workflow = { signalWorkflowExecution: () => ({}) };
    const readInput = () => (reads++, interrupt.abort(), new Promise<string>(() => {}));
    const r = await runCli(["workflow", "signal", "-w", "w", "--name", "go", "--input", "-"], { workflow, readInput, signal: interrupt.signal });
    expect([r.code, r.stdout, r.stderr, reads]).toEqual([130, "", "", 1]);
  });

  test("signal-with-start takes --signal-name and --signal-input", async () => {
    let name = "";
    let input = "";
    const r = await runCli(
      ["workflow", "signal-with-start", "-w", "w", "--type", "T", "--name", "go", "--signal-input", "[1]"],
      {
        workflow: {
          signalWithStartWorkflowExecution: (req) => {
            name = req.signalName;
            input = text(req.signalInput!.payloads[0]!.data);
            return { runId: "r", started: true };
          },
        },
      },
    );
    expect(r.code).toBe(0);
    expect(name).toBe("go");
    expect(input).toBe("[1]");
  });
});

describe("workflow writes on one execution", () => {
  test("fail puts --reason in failure.message; run id is passed through", async () => {
    let message = "";
    let runId = "";
    const r = await runCli(["workflow", "fail", "-w", "w", "-r", "run-9", "--reason", "card declined"], {
      workflow: {
        failWorkflowExecution: (req) => {
          message = req.failure!.message;
          runId = req.workflowExecution!.runId;
          return {};
        },
      },
    });
    expect(r.code).toBe(0);
    expect(message).toBe("card declined");
    expect(runId).toBe("run-9");
  });

  test("marker sends expected next event id as int64", async () => {
    let expected: bigint | undefined;
    const r = await runCli(["workflow", "marker", "-w", "w", "--name", "m", "--expected-next-event-id", "5"], {
      workflow: { recordMarker: (req) => ((expected = req.expectedNextEventId), { eventId: 5n }) },
    });
    expect(r.code).toBe(0);
    expect(expected).toBe(5n);
    const bad = await runCli(["workflow", "marker", "-w", "w", "--name", "m", "--expected-next-event-id", "x"]);
    expect(bad.code).toBe(2);
  });

  test("an --expected-next-event-id past int64 is a usage error naming the flag, not an internal encoding error", async () => {
    const r = await runCli(["workflow", "marker", "-w", "w", "--name", "m", "--expected-next-event-id", "99999999999999999999"], {
      workflow: { recordMarker: () => ({ eventId: 5n }) },
    });
    expect(r.code).toBe(2);
    expect(r.stderr.split("\n")[0]).toBe('error: --expected-next-event-id must be an integer of at most 9223372036854775807, got "99999999999999999999"');
  });

  test("terminate takes --reason or none, as Temporal's CLI does", async () => {
    // Before: a usage error, "--reason is required".
    const reasons: string[] = [];
    const workflow = { terminateWorkflowExecution: (req: { reason: string }) => (reasons.push(req.reason), {}) };
    const none = await runCli(["workflow", "terminate", "-w", "w"], { workflow });
    expect(none.code).toBe(0);
    expect(none.stdout).toBe("Terminated workflow w\n");
    const given = await runCli(["workflow", "terminate", "-w", "w", "--reason", "done"], { workflow });
    expect(given.code).toBe(0);
    expect(reasons).toEqual(["", "done"]);
  });

  test("cancel's and terminate's --reason read alike: both optional, both say so", async () => {
    // Was: cancel's "Reason", terminate's "Reason (default: none)", for the same optional flag.
    for (const command of ["cancel", "terminate"]) {
      const r = await runCli(["workflow", command, "--help"]);
      expect(r.stdout).toMatch(/^ {6}--reason TEXT +Reason \(default: none\)$/m);
    }
  });
});

describe("workflow list", () => {
  test("maps filters and stops at --limit", async () => {
    const seen: ListWorkflowExecutionsRequest[] = [];
    const r = await runCli(
      ["workflow", "list", "--status", "timed-out", "--type", "T", "--start-after", "2024-05-01T00:00:00Z", "--limit", "3", "-o", "json"],
      {
        workflow: {
          listWorkflowExecutions(req) {
            seen.push(req);
            const base = seen.length * 10;
            const executions = [1, 2].map((i) => ({
              execution: { workflowId: `w${base + i}`, runId: "r" },
              status: WorkflowExecutionStatus.TIMED_OUT,
            }));
            return { executions, nextPageToken: new Uint8Array([seen.length]) };
          },
        },
      },
    );
    expect(r.code).toBe(0);
    expect(seen.length).toBe(2);
    expect(seen[0]!.status).toBe(WorkflowExecutionStatus.TIMED_OUT);
    expect(seen[0]!.workflowType).toBe("T");
    expect(seen[0]!.startTimeMin?.seconds).toBe(BigInt(Date.UTC(2024, 4, 1) / 1000));
    expect(seen[0]!.pageSize).toBe(3);
    expect(Array.from(seen[1]!.nextPageToken)).toEqual([1]);
    expect(JSON.parse(r.stdout).executions.length).toBe(3);
  });

  test("--start-after takes a zone-less time as UTC and refuses a day the month lacks (Date.parse took 2023-02-29 as March 1)", async () => {
    const seen: ListWorkflowExecutionsRequest[] = [];
    const workflow = { listWorkflowExecutions: (req: ListWorkflowExecutionsRequest) => (seen.push(req), { executions: [] }) };
    expect((await runCli(["workflow", "list", "--start-after", "2024-05-01T12:00"], { workflow })).code).toBe(0);
    expect(seen[0]!.startTimeMin?.seconds).toBe(BigInt(Date.UTC(2024, 4, 1, 12) / 1000));
    const bad = await runCli(["workflow", "list", "--start-after", "2023-02-29"], { workflow });
    expect([bad.code, bad.stdout, bad.stderr.split("\n")[0]]).toEqual([2, "", 'error: --start-after must be an RFC 3339 time (e.g. 2024-05-01T12:00:00Z, 2024-05-01; UTC unless a zone is given), got "2023-02-29": 2023-02 has no day 29']);
    expect(seen).toHaveLength(1);
  });

  test("--start-before says its time is included, as the server's start_time_max includes it", async () => {
    // Before: "Only started before", while a run started at that very time was listed.
    expect((await runCli(["workflow", "list", "--help"])).stdout).toContain("--start-before TIME           Only started at or before this RFC 3339 time (UTC unless it names a zone)");
  });

  test("bad --status and --start-before are usage errors", async () => {
    expect((await runCli(["workflow", "list", "--status", "sleeping"])).code).toBe(2);
    expect((await runCli(["workflow", "list", "--start-before", "yesterday-ish"])).code).toBe(2);
  });
});

describe("workflow show", () => {
  test("pages through next_page_token and stops at the empty one", async () => {
    const tokens: number[] = [];
    const r = await runCli(["workflow", "show", "-w", "w", "-o", "json"], {
      workflow: {
        getWorkflowExecutionHistory(req) {
          const page = req.nextPageToken.length === 0 ? 0 : req.nextPageToken[0]!;
          tokens.push(page);
          const next = page < 2 ? new Uint8Array([page + 1]) : new Uint8Array(0);
          return { history: { events: [event(page * 2 + 1), event(page * 2 + 2)] }, nextPageToken: next, runId: "r1" };
        },
      },
    });
    expect(r.code).toBe(0);
    expect(tokens).toEqual([0, 1, 2]);
    expect(JSON.parse(r.stdout).events.map((e: { eventId: string }) => e.eventId)).toEqual(["1", "2", "3", "4", "5", "6"]);
  });

  test("-o json writes each page before fetching the next (a large history is never held whole)", async () => {
    let written = "";
    const writtenAtPage: string[] = [];
    const r = await runCli(["workflow", "show", "-w", "w", "-o", "json"], {
      onStdout: (t) => void (written += t),
      workflow: {
        getWorkflowExecutionHistory(req) {
          const page = req.nextPageToken.length === 0 ? 0 : req.nextPageToken[0]!;
          writtenAtPage.push(written);
          return { history: { events: [event(page + 1)] }, nextPageToken: page < 1 ? new Uint8Array([page + 1]) : new Uint8Array(0), runId: "r1" };
        },
      },
    });
    expect(r.code).toBe(0);
    expect(writtenAtPage[0]).toBe("");
    expect(writtenAtPage[1]).toContain('"eventId": "1"');
    expect(JSON.parse(r.stdout).events.map((e: { eventId: string }) => e.eventId)).toEqual(["1", "2"]);
  });

  test("a running run: stops when a page comes back empty", async () => {
    let calls = 0;
    const r = await runCli(["workflow", "show", "-w", "w"], {
      workflow: {
        getWorkflowExecutionHistory: () => {
          calls++;
          return { history: { events: calls === 1 ? [event(1, EventType.WORKFLOW_EXECUTION_STARTED)] : [] }, nextPageToken: new Uint8Array([9]) };
        },
      },
    });
    expect(r.code).toBe(0);
    expect(calls).toBe(2);
    expect(r.stdout.split("\n")[0]).toMatch(/^EVENT ID +VERSION +TIME +TYPE +DETAILS$/);
    expect(r.stdout).toContain("WorkflowExecutionStarted");
  });

  test("--follow long-polls with the last token and ends when the token is empty", async () => {
    const seen: GetWorkflowExecutionHistoryRequest[] = [];
    const script = [
      { events: [1, 2], token: [1] },
      { events: [], token: [1] }, // long poll timed out without news
      { events: [3], token: [2] },
      { events: [4], token: [] }, // closed
    ];
    const r = await runCli(["workflow", "show", "-w", "w", "--follow", "-o", "json"], {
      workflow: {
        async getWorkflowExecutionHistory(req) {
          seen.push(req);
          const step = script[seen.length - 1]!;
          if (step.events.length === 0) await Bun.sleep(250); // a real long poll takes time
          return { history: { events: step.events.map((i) => event(i)) }, nextPageToken: new Uint8Array(step.token), runId: "r7" };
        },
      },
    });
    expect(r.code).toBe(0);
    expect(seen.length).toBe(4);
    expect(seen.every((s) => s.waitNewEvent)).toBe(true);
    expect(seen.map((s) => Array.from(s.nextPageToken))).toEqual([[], [1], [1], [2]]);
    expect(seen[0]!.execution!.runId).toBe("");
    expect(seen[1]!.execution!.runId).toBe("r7"); // pinned to the run the server resolved
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines.map((l) => JSON.parse(l).eventId)).toEqual(["1", "2", "3", "4"]);
  });

  test("--follow in table mode prints a header then one line per event", async () => {
    let n = 0;
    const r = await runCli(["workflow", "show", "-w", "w", "-f"], {
      workflow: {
        getWorkflowExecutionHistory: () => {
          n++;
          return { history: { events: [event(n)] }, nextPageToken: new Uint8Array(n < 3 ? [n] : []) };
        },
      },
    });
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines.length).toBe(4);
    expect(lines[0]).toMatch(/^EVENT ID +VERSION/);
    expect(lines[3]).toMatch(/^3 +1 +MarkerRecorded/);
  });
});
