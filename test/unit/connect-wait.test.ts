import { describe, expect, test } from "bun:test";
import { createLogger } from "../../src/observability/log";
import { connectWithin } from "../../src/persistence/connect-wait";

/** postgres.js's error when nothing listens, as the driver shapes it (a failed system call). */
const refused = () => Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED", syscall: "connect" });

/** connectWithin on a fake clock: each attempt runs attempt(at), sleeps only move the clock. */
async function run(attempt: (at: number) => unknown, waitMs: number) {
  let clock = 0;
  const attemptsAt: number[] = [];
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ level: "debug", write: (l) => lines.push(JSON.parse(l)) });
  const result = connectWithin(
    async () => {
      attemptsAt.push(clock);
      return attempt(clock);
    },
    { waitMs, setting: "persistence.datastore.postgres.connectWaitMs", log, target: "postgres://h/db", now: () => clock, sleep: async (ms) => void (clock += ms) },
  );
  return { outcome: await result.then((value) => ({ value }), (error: Error) => ({ error })), attemptsAt, lines };
}

describe("waiting for PostgreSQL at start", () => {
  test("RetriesWithAGrowingDelay, SaysSoOncePer10s, and ends with the refusal and how long it tried", async () => {
    const { outcome, attemptsAt, lines } = await run(() => { throw refused(); }, 35_000);
    // 0.1 s doubling to 2 s, the last attempt at the deadline.
    expect(attemptsAt.slice(0, 7)).toEqual([0, 100, 300, 700, 1500, 3100, 5100]);
    expect(attemptsAt.at(-1)).toBe(35_000);
    expect((outcome as { error: Error }).error.message).toBe(`connect ECONNREFUSED 127.0.0.1:5432 (${attemptsAt.length} attempts in 35000 ms; persistence.datastore.postgres.connectWaitMs is 35000 ms)`);
    const waits = lines.filter((l) => l.msg === "waiting for the database");
    expect(waits.map((l) => l.waitedMs)).toEqual([0, 11_100, 21_100, 31_100]);
    expect(waits.every((l) => l.level === "warn" && l.error === "connect ECONNREFUSED 127.0.0.1:5432")).toBe(true);
    expect(lines).toHaveLength(4);
  });

  test("SaysWhenTheDatabaseAnswers", async () => {
    const { outcome, lines } = await run((at) => {
      if (at < 1_000) throw refused();
      return "client";
    }, 60_000);
    expect(outcome).toEqual({ value: "client" });
    expect(lines.map((l) => [l.msg, l.waitedMs, l.attempts])).toEqual([["waiting for the database", 0, 1], ["database reachable", 1500, 5]]);
  });

  test("FailsAtOnceOnARefusalWaitingCannotMend, and without a wait", async () => {
    const fatal = (code: string) => () => { throw Object.assign(new Error(code), { code, severity: "FATAL" }); };
    for (const code of ["28P01", "3D000"]) {
      const { attemptsAt, lines } = await run(fatal(code), 60_000);
      expect([code, attemptsAt]).toEqual([code, [0]]);
      expect(lines).toEqual([]);
    }
    // PostgreSQL starting up (57P03) is waited for.
    expect((await run(fatal("57P03"), 1_000)).attemptsAt.length).toBeGreaterThan(1);
    const { outcome, attemptsAt } = await run(() => { throw refused(); }, 0);
    expect([attemptsAt, (outcome as { error: Error }).error.message]).toEqual([[0], "connect ECONNREFUSED 127.0.0.1:5432"]);
  });
});
