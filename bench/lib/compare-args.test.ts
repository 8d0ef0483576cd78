import { expect, test } from "bun:test";
import { parseCompareArgs, runOrder } from "./compare-args";

test("parseCompareArgs: --base is required; defaults; numbers checked", () => {
  expect(() => parseCompareArgs([])).toThrow("--base is required");
  expect(parseCompareArgs(["--base", "HEAD~1"])).toEqual({ base: "HEAD~1", pairs: 4, rate: 500, clients: 32, durationS: 10, warmupS: 3, shards: 4, ownPostgres: false, headEnv: {} });
  expect(parseCompareArgs(["--base", "x", "--own-postgres"]).ownPostgres).toBe(true);
  expect(() => parseCompareArgs(["--base", "x", "--own-postgres=yes"])).toThrow("usage:");
  expect(parseCompareArgs(["--base=abc", "--pairs", "4", "--rate=250", "--duration", "5"])).toMatchObject({ base: "abc", pairs: 4, rate: 250, durationS: 5 });
  expect(() => parseCompareArgs(["--base", "x", "--pairs", "1.5"])).toThrow("not a positive whole number");
  expect(() => parseCompareArgs(["--base", "x", "--rate", "0"])).toThrow("not a positive number");
  expect(() => parseCompareArgs(["--base", "x", "--nope", "1"])).toThrow("usage:");
});

test("parseCompareArgs: --head-env NAME=VALUE, repeatable, for the head side's servers only", () => {
  expect(parseCompareArgs(["--base", "x", "--head-env", "A_B=1", "--head-env=C=d=e"]).headEnv).toEqual({ A_B: "1", C: "d=e" });
  expect(parseCompareArgs(["--base", "x", "--head-env", "EMPTY="]).headEnv).toEqual({ EMPTY: "" });
  expect(() => parseCompareArgs(["--base", "x", "--head-env", "novalue"])).toThrow("is not NAME=VALUE");
  expect(() => parseCompareArgs(["--base", "x", "--head-env", "1X=2"])).toThrow("is not NAME=VALUE");
});

test("runOrder alternates ABBA so a steady drift weighs on both sides", () => {
  expect(runOrder(1)).toEqual(["base", "head"]);
  expect(runOrder(3)).toEqual(["base", "head", "head", "base", "base", "head"]);
  const order = runOrder(4);
  // Each side's mean position is the same: a linear drift adds the same to both.
  const mean = (side: string) => order.reduce((s, x, i) => s + (x === side ? i : 0), 0) / order.filter((x) => x === side).length;
  expect(mean("base")).toBe(mean("head"));
});
