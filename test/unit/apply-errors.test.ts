import { describe, expect, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { isTaskFailure, RetryableReplicationError } from "../../replication/apply-errors";

/** A driver error as postgres.js raises it, wrapped as drizzle wraps it ("Failed query: ..." with the driver's as cause). */
const driver = (message: string, fields: Record<string, unknown>) => Object.assign(new Error(message), fields);
const drizzled = (cause: Error) => new Error("Failed query: insert into history_events ...\nparams: 1,2", { cause });

describe("isTaskFailure", () => {
  test.each([
    ["a socket reset", driver("read ECONNRESET", { code: "ECONNRESET", syscall: "read" })],
    ["a refused connect", driver("connect ECONNREFUSED 127.0.0.1:5432", { code: "ECONNREFUSED", syscall: "connect" })],
    ["postgres.js CONNECTION_CLOSED", driver("write CONNECTION_CLOSED 127.0.0.1:5432", { code: "CONNECTION_CLOSED" })],
    ["postgres.js CONNECTION_ENDED", driver("write CONNECTION_ENDED 127.0.0.1:5432", { code: "CONNECTION_ENDED" })],
    ["postgres.js CONNECT_TIMEOUT", driver("write CONNECT_TIMEOUT 127.0.0.1:5432", { code: "CONNECT_TIMEOUT" })],
    ["57P01 admin_shutdown", driver("terminating connection due to administrator command", { code: "57P01", severity: "FATAL" })],
    ["57P02 crash_shutdown", driver("terminating connection because of crash of another server process", { code: "57P02", severity: "FATAL" })],
    ["57P03 shutting down", driver("the database system is shutting down", { code: "57P03", severity: "FATAL" })],
    ["55000 not accepting connections", driver('database "tern" is not currently accepting connections', { code: "55000", severity: "FATAL" })],
  ])("this cluster's database lost or refusing connections (%s) is not the task's fault, bare or wrapped by drizzle", (_, e) => {
    expect(isTaskFailure(e)).toBe(false);
    expect(isTaskFailure(drizzled(e))).toBe(false);
  });

  test.each([
    ["a retryable replication error", new RetryableReplicationError("namespace not replicated yet"), false],
    ["an unreachable source", new ConnectError("unavailable", Code.Unavailable), false],
    ["a source call that got no answer (its connection reset or refused: connect's Unknown)", new ConnectError("ECONNRESET: The socket connection was closed unexpectedly", Code.Unknown), false],
    ["a constraint violation", drizzled(driver("duplicate key value", { code: "23505", severity: "ERROR" })), true],
    ["a bug in the applier", new TypeError("cannot read properties of undefined"), true],
    ["an internal error from the source", new ConnectError("internal", Code.Internal), true],
  ])("%s: task failure %p", (_, e, expected) => {
    expect(isTaskFailure(e)).toBe(expected);
  });
});
