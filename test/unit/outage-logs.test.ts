import { describe, expect, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { toConnectError } from "../../src/frontend/errors";
import { createTimerQueue, type TimerQueueDeps } from "../../src/history/timer-queue";
import { createLogger } from "../../src/observability/log";
import { createPeriodic } from "../../src/periodic";
import { createRepeatLog } from "../../src/observability/repeat-log";
import { createFlapLog } from "../../src/observability/failure-log";
import { eventually } from "../support/eventually";

/** A logger keeping its lines. */
function capture() {
  const lines: Record<string, unknown>[] = [];
  return { lines, log: createLogger({ level: "debug", write: (l) => lines.push(JSON.parse(l)) }) };
}

/** postgres.js's error as drizzle wraps it: the statement and every bound parameter in the message. */
const drizzled = (cause: Error) =>
  new Error('Failed query: insert into "history_events" ("payload") values ($1)\nparams: {"card":"4111-secret-signal-input"}', { cause });

describe("toConnectError", () => {
  test.each([
    ["a socket reset", Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET", syscall: "read" }), "read ECONNRESET"],
    ["a server shutting down", Object.assign(new Error("the database system is shutting down"), { code: "57P03", severity: "FATAL" }), "57P03: the database system is shutting down"],
  ])("a lost connection (%s) is UNAVAILABLE and logged with the driver's message only: no statement, parameters or stack", (_, cause, logged) => {
    const { lines, log } = capture();
    const err = toConnectError(drizzled(cause), "req-1", log);
    expect(err.code).toBe(Code.Unavailable);
    expect(lines).toEqual([{ time: expect.any(String), level: "warn", msg: "database connection lost", requestId: "req-1", error: logged }]);
    expect(JSON.stringify(lines)).not.toContain("secret-signal-input");
  });
});

describe("toConnectError, a database that cannot run the request now", () => {
  // A statement or lock timeout also names the setting that caps it: an operator's choice, not the request's fault.
  const statementTimeoutSetting = ", over persistence.datastore.postgres.statementTimeoutMs (or PostgreSQL's statement_timeout where that is 0)";
  const lockTimeoutSetting = ", over persistence.datastore.postgres.lockTimeoutMs (or PostgreSQL's lock_timeout where that is 0)";
  test.each([
    ["57014", "canceling statement due to statement timeout", statementTimeoutSetting],
    ["55P03", "canceling statement due to lock timeout", lockTimeoutSetting],
    // A NOWAIT lock refused at once: the same code, but no timeout of tern's settings ran out.
    ["55P03", 'could not obtain lock on row in relation "executions"', ""],
    ["40P01", "deadlock detected", ""],
    ["40001", "could not serialize access due to concurrent update", ""],
    ["25006", "cannot execute INSERT in a read-only transaction", ""],
    ["53100", 'could not extend file "base/16384/16400": No space left on device', ""],
  ])("%s is UNAVAILABLE naming PostgreSQL's reason, logged as a warning without the parameters", (code, message, setting) => {
    const { lines, log } = capture();
    const err = toConnectError(drizzled(Object.assign(new Error(message), { code, severity: "ERROR" })), "req-4", log);
    expect(err.code).toBe(Code.Unavailable);
    expect(err.rawMessage).toBe(`the database could not run the request now (${code}: ${message}${setting}; request id req-4); retry`);
    expect(lines.map(({ level, msg }) => ({ level, msg }))).toEqual([{ level: "warn", msg: "database could not run the request now" }]);
    expect(JSON.stringify(lines)).not.toContain("secret-signal-input");
  });

  test("a constraint violation or an undefined table is not: INTERNAL", () => {
    const { log } = capture();
    for (const code of ["23505", "42P01", "XX000"]) expect(toConnectError(drizzled(Object.assign(new Error("x"), { code })), "req-5", log).code).toBe(Code.Internal);
  });
});

describe("toConnectError, any database error", () => {
  test("an internal error and a value refused are logged with the database's reason, the statement and stack, not the bound parameters", () => {
    const { lines, log } = capture();
    const broken = drizzled(Object.assign(new Error("relation does not exist"), { code: "42P01" }));
    expect(toConnectError(broken, "req-2", log).code).toBe(Code.Internal);
    const nul = drizzled(Object.assign(new Error("invalid byte sequence"), { code: "22021" }));
    expect(toConnectError(nul, "req-3", log).code).toBe(Code.InvalidArgument);
    expect(lines.map((l) => l.msg)).toEqual(["internal error", "request refused by the database's value checks"]);
    expect(lines.map((l) => (l.error as string).split("\n")[0])).toEqual(["42P01: relation does not exist", "22021: invalid byte sequence"]);
    for (const { error } of lines) {
      expect(error).toContain('Failed query: insert into "history_events"');
      expect(error).toContain("params: (not logged)");
      expect(error).toMatch(/\n\s+at /);
    }
    expect(JSON.stringify(lines)).not.toContain("secret-signal-input");
  });
});

const lost = () => drizzled(Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET", syscall: "read" }));

/**
 * A PostgreSQL that stays down, as postgres.js fails the retries in turn: a new connection
 * refused, and a query queued on one that closed meanwhile.
 */
const downMessage = (i: number) => (i % 2 === 0 ? "connect ECONNREFUSED 127.0.0.1:5432" : "write CONNECTION_CLOSED 127.0.0.1:5432");
const downForGood = (i: number) =>
  drizzled(Object.assign(new Error(downMessage(i)), i % 2 === 0 ? { code: "ECONNREFUSED", syscall: "connect" } : { code: "CONNECTION_CLOSED" }));

/** A drizzle db whose every query fails with failing() while it returns one, and answers no rows otherwise. */
function flakyDb(failing: () => Error | undefined): unknown {
  // Every query builder call returns the builder; awaiting it answers as the driver does.
  const db: unknown = new Proxy(() => {}, {
    get: (_, k) => (k === "then" ? (ok: (rows: unknown[]) => void, fail: (e: unknown) => void) => (failing() ? fail(failing()) : ok([])) : () => db),
  });
  return db;
}

describe("timer queue", () => {
  test("a scan failing on a lost connection is a warning with the driver's message, not an error with the statement", async () => {
    const { lines, log } = capture();
    const queue = createTimerQueue({ db: flakyDb(lost), log, currentCluster: "a", now: () => new Date(), pollMs: 60_000 } as unknown as TimerQueueDeps);
    queue.start(); // scans at once
    await queue.stop();
    expect(lines.map(({ level, msg, error }) => ({ level, msg, error }))).toEqual([{ level: "warn", msg: "timer queue scan failed", error: "read ECONNRESET" }]);
  });

  test("an outage's failed scans are said once, and the first scan after it", async () => {
    const { lines, log } = capture();
    let error: Error | undefined = lost();
    const queue = createTimerQueue({ db: flakyDb(() => error), log, currentCluster: "a", now: () => new Date(), pollMs: 60_000 } as unknown as TimerQueueDeps);
    queue.start();
    for (let i = 0; i < 5; i++) await queue.rescan();
    error = undefined;
    await queue.rescan();
    await queue.rescan();
    await queue.stop();
    expect(lines.map(({ level, msg }) => `${level} ${msg}`)).toEqual(["warn timer queue scan failed", "info timer queue scan recovered"]);
  });

  test("a database that stays down, failing scans with the driver's two messages in turn, is said once per message, not at each change", async () => {
    const { lines, log } = capture();
    let scans = 0;
    let down = true;
    const queue = createTimerQueue({ db: flakyDb(() => (down ? downForGood(scans) : undefined)), log, currentCluster: "a", now: () => new Date(), pollMs: 60_000 } as unknown as TimerQueueDeps);
    queue.start();
    for (; scans < 8; scans++) await queue.rescan();
    down = false;
    await queue.rescan();
    await queue.stop();
    // Said at every change before: a line a second (the scan's retry) for as long as the outage lasted.
    expect(lines.map(({ level, msg, error }) => `${level} ${msg}${error ? `: ${error}` : ""}`)).toEqual([
      "warn timer queue scan failed: connect ECONNREFUSED 127.0.0.1:5432",
      "warn timer queue scan failed: write CONNECTION_CLOSED 127.0.0.1:5432",
      "info timer queue scan recovered",
    ]);
  });
});

describe("a periodic pass", () => {
  test("failing pass after pass is said once per failure, with the driver's message, and its recovery once", async () => {
    const { lines, log } = capture();
    const outcomes: (Error | undefined)[] = [lost(), lost(), lost(), new Error("relation does not exist"), undefined, undefined, lost()];
    let passes = 0;
    const periodic = createPeriodic(
      async () => {
        const e = outcomes[passes++];
        if (e) throw e;
        return passes;
      },
      { name: "replication task cleanup", log, intervalMs: 1 },
    );
    periodic.start();
    await eventually(() => expect(passes).toBeGreaterThanOrEqual(outcomes.length), { timeout: 5_000, interval: 1 });
    await periodic.stop();
    expect(lines.slice(0, 4).map(({ level, msg, error }) => ({ level, msg, error }))).toEqual([
      { level: "warn", msg: "replication task cleanup failed", error: "read ECONNRESET" },
      { level: "warn", msg: "replication task cleanup failed", error: "relation does not exist" },
      { level: "info", msg: "replication task cleanup recovered", error: undefined },
      { level: "warn", msg: "replication task cleanup failed", error: "read ECONNRESET" },
    ]);
  });

  test("a database that stays down, failing passes with the driver's two messages in turn, is said once per message, not at each change", async () => {
    const { lines, log } = capture();
    let passes = 0;
    const periodic = createPeriodic(
      async () => {
        const i = passes++;
        if (i < 8) throw downForGood(i);
        return i;
      },
      { name: "gathering planner statistics", log, intervalMs: 1 },
    );
    periodic.start();
    await eventually(() => expect(passes).toBeGreaterThan(8), { timeout: 5_000, interval: 1 });
    await periodic.stop();
    expect(lines.map(({ level, msg, error }) => `${level} ${msg}${error ? `: ${error}` : ""}`)).toEqual([
      "warn gathering planner statistics failed: connect ECONNREFUSED 127.0.0.1:5432",
      "warn gathering planner statistics failed: write CONNECTION_CLOSED 127.0.0.1:5432",
      "info gathering planner statistics recovered",
    ]);
  });
});

describe("createRepeatLog", () => {
  test("a line alike but for its request id is written once a window, the next saying how many it stood for; the rest go to debug", () => {
    const { lines, log } = capture();
    let now = 0;
    const repeats = createRepeatLog(log, { windowMs: 10_000, now: () => now });
    const lost = (id: string) => repeats.warn("database connection lost", { requestId: id, error: `read ECONNRESET (request id ${id})` });
    lost("r1");
    now = 5_000;
    lost("r2");
    lost("r3");
    repeats.warn("database connection lost", { requestId: "r4", error: "connect ECONNREFUSED" }); // another failure: its own line
    now = 10_000;
    lost("r5");
    const written = lines.filter((l) => l.level !== "debug").map(({ requestId, repeated }) => ({ requestId, repeated }));
    expect(written).toEqual([{ requestId: "r1", repeated: undefined }, { requestId: "r4", repeated: undefined }, { requestId: "r5", repeated: 2 }]);
    expect(lines.filter((l) => l.level === "debug").map((l) => [l.requestId, l.repeatOf])).toEqual([["r2", "warn"], ["r3", "warn"]]);
  });
});

describe("createFlapLog", () => {
  test("a call failing and recovering again and again is said once a window, the next line saying how many were left out; one that then stays down is said", () => {
    let now = 0;
    const flaps = createFlapLog({ windowMs: 10_000, now: () => now });
    const said: string[] = [];
    const fail = (message: string) => {
      const write = flaps.failed(message);
      if (write) said.push(`failed ${message}${write.repeated ? ` (repeated ${write.repeated})` : ""}`);
    };
    const recover = () => {
      if (flaps.recovered() !== undefined) said.push("recovered");
    };
    /** A cut at each second from..to (excluded), failing twice (a retry) and recovering 300 ms later. */
    const cutEverySecond = (from: number, to: number) => {
      for (let s = from; s < to; s++) {
        now = s * 1_000;
        fail("connection reset");
        fail("connection reset");
        now += 300;
        recover();
      }
    };
    // Cut every second: the first cut and its recovery are said, the next eight are not.
    cutEverySecond(0, 9);
    // Another failure is said at once.
    now = 9_500;
    fail("the database system is shutting down");
    now = 9_600;
    recover();
    expect(said).toEqual(["failed connection reset", "recovered", "failed the database system is shutting down", "recovered"]);

    // Another failure between does not open the window again; the cuts left out are counted in the next line said of them.
    said.length = 0;
    now = 9_700;
    fail("connection reset");
    now = 9_900;
    recover();
    cutEverySecond(10, 20);
    now = 20_000;
    fail("connection reset");
    recover();
    expect(said).toEqual(["failed connection reset (repeated 9)", "recovered", "failed connection reset (repeated 9)", "recovered"]);

    // Left out in the window, and down past it: said at the first retry after it, and then its recovery.
    said.length = 0;
    now = 21_000;
    fail("connection reset");
    now = 29_000;
    fail("connection reset");
    expect(said).toEqual([]);
    now = 30_000;
    fail("connection reset");
    fail("connection reset");
    recover();
    expect(said).toEqual(["failed connection reset", "recovered"]);
  });

  test("a stream whose database stays down, failing with the driver's two messages in turn, is said once per message, however long", () => {
    let now = 0;
    const flaps = createFlapLog({ windowMs: 10_000, now: () => now });
    const said: string[] = [];
    for (let i = 0; i < 60; i++, now += 1_000) {
      if (flaps.failed(downMessage(i))) said.push(downMessage(i));
    }
    expect(said).toEqual([downMessage(0), downMessage(1)]);
  });
});
