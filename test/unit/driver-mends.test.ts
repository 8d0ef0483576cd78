import { afterAll, describe, expect, test } from "bun:test";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import mends from "../../scripts/dependency-mends.json";
import { driverMendsMissing } from "../../src/persistence/driver-mends";

describe("the server's check of postgres.js's mends (src/persistence/driver-mends.ts)", () => {
  const installed = join(dirname(fileURLToPath(import.meta.resolve("postgres"))), "..");
  const dir = mkdtempSync(join(tmpdir(), "tern-mends-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** A copy of the installed package, changed by edit. */
  const copyWith = (name: string, edit: (pkg: string) => void) => {
    const pkg = join(dir, name);
    cpSync(installed, pkg, { recursive: true });
    edit(pkg);
    return pkg;
  };
  const rewrite = (path: string, from: string, to: string) => {
    const text = readFileSync(path, "utf8");
    expect(text).toContain(from);
    writeFileSync(path, text.replace(from, to));
  };

  test("FindsEveryMendInTheInstalledDriver", () => {
    expect(driverMendsMissing()).toBeUndefined();
    expect(driverMendsMissing(installed)).toBeUndefined();
  });

  test("NamesAMendUndone, in any build", () => {
    const reserve = mends.packages[0]!.mends["index.js"]![1]!;
    const pkg = copyWith("one-undone", (p) => rewrite(join(p, "cjs/src/index.js"), `${reserve.to}${mends.mark}\n`, reserve.from));
    expect(driverMendsMissing(pkg)).toBe("postgres 3.4.9 lacks tern's mends in cjs/src/index.js (mend 7: in reserve())");
  });

  test("NamesOneOfTwoPlacesUndone", () => {
    const timer = mends.packages[0]!.mends["connection.js"]![0]!;
    expect(timer.count).toBe(2);
    const pkg = copyWith("half-undone", (p) => rewrite(join(p, "src/connection.js"), `${timer.to}${mends.mark}\n`, timer.from));
    expect(driverMendsMissing(pkg)).toBe("postgres 3.4.9 lacks tern's mends in src/connection.js (mend 1: in terminate() and in closed())");
  });

  // npm runs the script after every install: on a tree it mended already it must change nothing
  // and succeed (a mend whose text stays in the mended file failed the second \`npm install\`).
  test("ThePatchScriptRunsAgainOnAMendedTreeAndChangesNothing", () => {
    const run = Bun.spawnSync(["node", "scripts/patch-dependencies.mjs"], { cwd: join(dirname(fileURLToPath(import.meta.url)), "../.."), stderr: "pipe", stdout: "pipe" });
    expect({ code: run.exitCode, out: `${run.stdout.toString()}${run.stderr.toString()}` }).toEqual({ code: 0, out: "" });
  });

  test("RefusesAnotherVersion", () => {
    const pkg = copyWith("bumped", (p) => rewrite(join(p, "package.json"), '"version": "3.4.9"', '"version": "3.4.10"'));
    expect(driverMendsMissing(pkg)).toBe("postgres 3.4.10 is installed; tern's mends are for 3.4.9");
  });
});
