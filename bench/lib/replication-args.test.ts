import { describe, expect, test } from "bun:test";
import { parseReplicationArgs } from "./replication-args";

describe("parseReplicationArgs", () => {
  test("defaults: the machine's PostgreSQL, the logical baseline on", () => {
    const a = parseReplicationArgs([]);
    expect([a.ownPostgres, a.skipLogical, a.keepLogs, a.rate, a.durationS]).toEqual([false, false, false, 500, 10]);
  });
  test("switches take no value; numbers do", () => {
    const a = parseReplicationArgs(["--own-postgres", "--rate", "250", "--skip-logical", "--duration=5"]);
    expect([a.ownPostgres, a.skipLogical, a.keepLogs, a.rate, a.durationS]).toEqual([true, true, false, 250, 5]);
  });
  test("refuses unknown flags and bad numbers with the usage line", () => {
    expect(() => parseReplicationArgs(["--own-pg", "1"])).toThrow(/unknown flag --own-pg\nusage: .*--own-postgres/);
    expect(() => parseReplicationArgs(["--rate", "fast"])).toThrow(/--rate: "fast" is not a positive number/);
  });
});
