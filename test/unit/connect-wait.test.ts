import { describe, expect, test } from "bun:test";
import { createLogger } from "../../src/observability/log";
import { connectWithin } from "../../src/persistence/connect-wait";
import { openDatabase } from "../../src/persistence/database";
import { createServer, type AddressInfo, type Socket } from "node:net";

/** postgres.js's error when nothing listens, as the driver shapes it (a failed system call). */
const refused = () => Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED", syscall: "connect" });

/** connectWithin on a fake clock: each attempt runs attempt(at), sleeps only move the clock. */
async function run(attempt: (at: number) => unknown, waitMs: number) {
  let clock = 0;
  const attemptsAt: number[] = [];
  /** The time each attempt was given. */
  const withins: (number | undefined)[] = [];
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ level: "debug", write: (l) => lines.push(JSON.parse(l)) });
  const result = connectWithin(
    async (withinMs) => {
      attemptsAt.push(clock);
      withins.push(withinMs);
      return attempt(clock);
    },
    { waitMs, setting: "persistence.datastore.postgres.connectWaitMs", log, target: "postgres://h/db", now: () => clock, sleep: async (ms) => void (clock += ms) },
  );
  return { outcome: await result.then((value) => ({ value }), (error: Error) => ({ error })), attemptsAt, withins, lines };
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

  test("EachAttemptIsGivenTheWaitsTimeLeft, at least a second; without a wait, nothing", async () => {
    const { attemptsAt, withins } = await run(() => { throw refused(); }, 3_000);
    expect(attemptsAt.slice(0, 4)).toEqual([0, 100, 300, 700]);
    expect(withins.slice(0, 4)).toEqual([3_000, 2_900, 2_700, 2_300]);
    expect(attemptsAt.at(-1)).toBe(3_000);
    expect(withins.at(-1)).toBe(1_000);
    expect((await run(() => { throw refused(); }, 0)).withins).toEqual([undefined]);
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

describe("waiting for a PostgreSQL address that never answers (a black hole)", () => {
  test("TheWaitEndsNearItsDeadline, not an attempt's 10 s connect timeout after it", async () => {
    // Takes connections and never answers the startup: each attempt runs to its connect timeout.
    const sockets = new Set<Socket>();
    const hole = createServer((socket) => (sockets.add(socket), socket.on("error", () => {})));
    await new Promise<void>((resolve) => hole.listen(0, "127.0.0.1", resolve));
    const { port } = hole.address() as AddressInfo;
    const started = performance.now();
    try {
      const opened = openDatabase({ postgres: { url: `postgres://tern@127.0.0.1:${port}/tern` } }, { connectWaitMs: 3_000 });
      const error = await opened.then(async (db) => (await db.close(), new Error("connected")), (e: Error) => e);
      const tookMs = performance.now() - started;
      expect(error.message).toStartWith(`cannot connect to PostgreSQL at postgres://tern@127.0.0.1:${port}/tern: no connection within 3000 ms, the wait's time left (1 attempt in `);
      expect(error.message).toEndWith(" ms; persistence.datastore.postgres.connectWaitMs is 3000 ms)");
      expect(tookMs).toBeGreaterThanOrEqual(2_900);
      expect(tookMs).toBeLessThan(5_000);
    } finally {
      sockets.forEach((s) => s.destroy());
      await new Promise((resolve) => hole.close(resolve));
    }
  }, 20_000);
});
