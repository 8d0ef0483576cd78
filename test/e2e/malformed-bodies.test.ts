/**
 * A request whose body is no protobuf message is refused by connect (INVALID_ARGUMENT) before
 * tern's interceptors run. An operator still sees it: the answer names a request id
 * (x-request-id), the server logs it with that id (once per 10 s for calls alike) and counts it
 * in service_requests and service_errors. A real server process, each protocol it serves. So is
 * a call to a procedure this build does not serve, answered by no handler at all.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { frame, rawGrpcCall } from "../support/raw-grpc";
import { eventually } from "../support/eventually";
import { startServerProcess, type ServerProcess } from "../runtime/server-process";
import { serverStartTimeout } from "../support/timeouts";

const PATH = "/tern.workflow.v1.WorkflowService/StartWorkflowExecution";
/** Field 1 (namespace, a string) said to be 5 bytes long, with 2 after it. */
const TRUNCATED = new Uint8Array([0x0a, 0x05, 0x6c, 0x69]);
const MESSAGE = "cannot decode message tern.workflow.v1.StartWorkflowExecutionRequest from binary: premature EOF";
const ULID = /^[0-9A-Z]{26}$/;

describe("a request body that is no message, refused before tern's handlers", () => {
  let server: ServerProcess;
  beforeAll(async () => {
    server = await startServerProcess([process.execPath, "src/main.ts"]);
  }, serverStartTimeout);
  afterAll(() => server.destroy());

  const post = (type: string, body: Uint8Array<ArrayBuffer> | string, header: Record<string, string> = {}) =>
    fetch(`${server.httpUrl}${PATH}`, { method: "POST", headers: { "content-type": type, ...header }, body });
  /** The server's log lines of refused calls. */
  const refusedLines = () =>
    server.output().split("\n").filter((l) => l.includes(`"msg":"rpc refused before its handler"`)).map((l) => JSON.parse(l) as Record<string, unknown>);
  const counter = async (name: string, labels: string) => {
    const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
    return Number(text.match(new RegExp(`^${name}\\{${labels.replace(/[{}]/g, "\\$&")}\\} (\\d+)$`, "m"))?.[1] ?? 0);
  };

  test("AnswersWithARequestId, LogsItAndCountsIt, in every protocol", async () => {
    // Connect, binary: the server's own id.
    const binary = await post("application/proto", TRUNCATED);
    expect([binary.status, await binary.json()]).toEqual([400, { code: "invalid_argument", message: MESSAGE }]);
    const binaryId = binary.headers.get("x-request-id");
    expect(binaryId).toMatch(ULID);
    // Connect, JSON: the caller's id kept.
    const json = await post("application/json", "{bad", { "x-request-id": "caller-json-1" });
    expect(json.status).toBe(400);
    expect(((await json.json()) as { code: string }).code).toBe("invalid_argument");
    expect(json.headers.get("x-request-id")).toBe("caller-json-1");
    // gRPC-web.
    const web = await post("application/grpc-web+proto", frame(TRUNCATED));
    expect(await web.text()).toContain("grpc-status: 3\r\n");
    const webId = web.headers.get("x-request-id");
    expect(webId).toMatch(ULID);
    // Native gRPC, on its own port.
    const grpc = await rawGrpcCall(server.grpcUrl!, PATH, frame(TRUNCATED), { "x-request-id": "caller-grpc-1" });
    expect([grpc.status, grpc.message, grpc.headers["x-request-id"]]).toEqual(["3", MESSAGE, "caller-grpc-1"]);

    // The gRPC-web and gRPC calls were refused as the binary one was: alike, left out of the log for 10 s.
    const lines = await eventually(() => {
      const found = refusedLines();
      expect(found).toHaveLength(2);
      return found;
    });
    expect(lines.map((l) => [l.requestId, l.operation, l.code, l.level])).toEqual([
      [binaryId, "StartWorkflowExecution", "invalid_argument", "info"],
      ["caller-json-1", "StartWorkflowExecution", "invalid_argument", "info"],
    ]);
    expect(lines[0]!.error).toBe(MESSAGE);
    const labels = `operation="StartWorkflowExecution",namespace=""`;
    expect(await counter("service_errors", `${labels},code="InvalidArgument"`)).toBe(4);
    expect(await counter("service_requests", labels)).toBe(4);
  });

  test("SaysCallsAlikeOncePer10s: 20 more bad bodies are no line of their own", async () => {
    const before = refusedLines().length;
    const ids = [];
    for (let i = 0; i < 20; i++) {
      const res = await post("application/proto", TRUNCATED);
      expect(res.status).toBe(400);
      ids.push(res.headers.get("x-request-id"));
    }
    expect(new Set(ids).size).toBe(20);
    // None, unless the binary one's 10 s ran out meanwhile (a slow machine): then one, saying how many it stood for.
    const added = refusedLines().slice(before);
    expect(added.length).toBeLessThanOrEqual(1);
    if (added.length) expect(added[0]!.repeated).toBeGreaterThan(0);
    expect(await counter("service_errors", `operation="StartWorkflowExecution",namespace="",code="InvalidArgument"`)).toBe(24);
  });

  test("ACallOfAProcedureThisBuildDoesNotServe: still HTTP 404 unimplemented, now with a request id, counted and logged", async () => {
    const unknown = "/tern.workflow.v1.WorkflowService/StartWorkflowExecutionFromTheFuture";
    const message = `procedure ${unknown.slice(1)} is not served by this tern version`;
    const labels = `operation="_unknown_",namespace=""`;
    // Connect: the answer a newer peer reads as an older tern's, unchanged.
    const res = await fetch(`${server.httpUrl}${unknown}`, { method: "POST", headers: { "content-type": "application/json", "x-request-id": "caller-unknown-1" }, body: "{}" });
    expect([res.status, await res.json(), res.headers.get("x-request-id")]).toEqual([404, { code: "unimplemented", message }, "caller-unknown-1"]);
    const line = await eventually(() => {
      const found = refusedLines().filter((l) => l.requestId === "caller-unknown-1");
      expect(found).toHaveLength(1);
      return found[0]!;
    });
    expect([line.level, line.operation, line.code, line.error]).toEqual(["info", "_unknown_", "unimplemented", message]);
    // Native gRPC, on its own port: HTTP 404 (UNIMPLEMENTED to a gRPC client) with the server's own id.
    const grpc = await rawGrpcCall(server.grpcUrl!, unknown, frame(new Uint8Array()));
    expect(grpc.headers[":status"]).toBe(404);
    expect(grpc.headers["x-request-id"]).toMatch(ULID);
    expect(await counter("service_requests", labels)).toBe(2);
    expect(await counter("service_errors", `${labels},code="Unimplemented"`)).toBe(2);
    // A path that is no procedure is left as it was: no id, not counted.
    expect((await fetch(`${server.httpUrl}/nope`)).headers.get("x-request-id")).toBeNull();
    expect(await counter("service_requests", labels)).toBe(2);
  });

  test("ACallersRequestIdPast128CharactersIsNotTaken: a new one in its answer and log line, where the whole header was in both", async () => {
    const describe = (requestId: string, namespace: string) =>
      fetch(`${server.httpUrl}/tern.workflow.v1.WorkflowService/DescribeNamespace`, { method: "POST", headers: { "content-type": "application/json", "x-request-id": requestId }, body: JSON.stringify({ namespace }) });
    const failedLine = (namespace: string) => eventually(() => {
      const line = server.output().split("\n").find((l) => l.includes(`"msg":"rpc failed"`) && l.includes(`namespace ${namespace} not found`));
      if (!line) throw new Error(`no line for ${namespace} yet`);
      return JSON.parse(line) as Record<string, unknown>;
    });
    const taken = "c".repeat(128);
    expect((await describe(taken, "long-id-1")).headers.get("x-request-id")).toBe(taken);
    expect((await failedLine("long-id-1")).requestId).toBe(taken);
    const long = await describe("c".repeat(6000), "long-id-2");
    const made = long.headers.get("x-request-id");
    expect([long.status, made]).toEqual([404, expect.stringMatching(ULID)]);
    expect((await failedLine("long-id-2")).requestId).toBe(made);
    // A call connect refuses before tern's handlers, too.
    expect((await post("application/proto", TRUNCATED, { "x-request-id": "c".repeat(6000) })).headers.get("x-request-id")).toMatch(ULID);
  });
});
