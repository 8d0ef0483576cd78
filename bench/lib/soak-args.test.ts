import { describe, expect, test } from "bun:test";
import { parseSoakArgs } from "./soak-args";

describe("parseSoakArgs", () => {
  test("defaults, and both flag forms", () => {
    expect(parseSoakArgs([])).toEqual({ seconds: 300, rate: 150, clients: 16, sampleSeconds: 5, fillRuns: 4096 });
    expect(parseSoakArgs(["--fill-runs", "0"]).fillRuns).toBe(0);
    expect(parseSoakArgs(["--fill-runs=100"]).fillRuns).toBe(100);
    expect(parseSoakArgs(["--rate=200", "--sample-seconds", "2", "--seconds", "60"])).toMatchObject({ rate: 200, sampleSeconds: 2, seconds: 60 });
  });

  test.each([[["--rate"]], [["--rate", "fast"]], [["--rate", "0"]], [["--clients", "2.5"]], [["--fill-runs", "-1"]], [["--fill-runs", "1.5"]], [["--fill-runs", ""]], [["--sekonds", "60"]], [["60"]], [["--sample-seconds", "90", "--seconds", "60"]]])(
    "%j is refused with the usage line",
    (argv) => expect(() => parseSoakArgs(argv)).toThrow(/usage: bun bench\/soak\.ts/),
  );
});
