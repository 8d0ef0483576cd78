import { describe, expect, test } from "bun:test";
import { ConnectError, Code } from "@connectrpc/connect";
import { createInboundHeard } from "../../replication/inbound-heard";
import { NotConnectAnswer } from "../../src/cluster/remote-client";

/**
 * A log on a clock the test moves: history's (a message every 10 s, stale once a call fails) or
 * namespace replication's (a 20 s long poll, failing polls stale at history's 12 s).
 */
function heardOn(kind: "history" | "namespace") {
  let t = 1_000_000;
  const log = createInboundHeard(kind === "history" ? { everyMs: 10_000, staleAfterMs: 0, now: () => t } : { everyMs: 20_000, staleAfterMs: 12_000, now: () => t });
  return { log, pass: (ms: number) => void (t += ms) };
}

const unavailable = new ConnectError("HTTP 502", Code.Unavailable);

describe("inbound heard", () => {
  test.each([
    // [stream, quiet ms after the last answer, a poll failed since, stale]
    ["history", 0, false, false],
    ["history", 12_000, false, false],
    ["history", 12_001, false, true],
    ["history", 0, true, true], // its call failed: what it wrote since is not seen
    ["namespace", 12_001, false, false], // a quiet long poll: nothing to send
    ["namespace", 22_001, false, true], // past the 20 s the source answers within
    ["namespace", 11_000, true, false],
    ["namespace", 12_001, true, true],
  ] as const)("%s, %i ms quiet, failing %p: stale %p", (kind, quietMs, failing, stale) => {
    const { log, pass } = heardOn(kind);
    log.heard("clusterA");
    pass(quietMs);
    if (failing) log.failed("clusterA", unavailable);
    expect(log.of("clusterA").stale).toBe(stale);
  });

  test("a remote never answered is stale, with why its calls fail; an answer clears the error", () => {
    const { log } = heardOn("namespace");
    expect(log.of("clusterA")).toEqual({ stale: true, error: undefined });
    log.failed("clusterA", unavailable);
    expect(log.of("clusterA")).toEqual({ stale: true, error: "unavailable: HTTP 502" });
    log.heard("clusterA");
    expect(log.of("clusterA")).toMatchObject({ stale: false, error: undefined });
  });

  test("an error the remote answered is said to be its answer; one of no answer, or a proxy's in its place, is not", () => {
    const { log } = heardOn("history");
    // As a tern answers (x-request-id on every answer): its database down, said bare, read as this cluster's own.
    const own = new ConnectError("the database connection was lost or refused (request id r1); retry", Code.Unavailable, { "x-request-id": "r1" });
    log.failed("clusterA", own);
    expect(log.of("clusterA").error).toBe("clusterA answered: unavailable: the database connection was lost or refused (request id r1); retry");
    const timedOut = new ConnectError("the operation timed out", Code.DeadlineExceeded);
    log.failed("clusterA", timedOut);
    expect(log.of("clusterA").error).toBe("deadline_exceeded: the operation timed out");
    const proxys = new ConnectError("HTTP 502", Code.Unavailable, { "x-request-id": "p1" }, undefined, new NotConnectAnswer("HTTP 502 \"bad gateway\""));
    log.failed("clusterA", proxys);
    expect(log.of("clusterA").error).toBe("unavailable: HTTP 502");
  });
});
