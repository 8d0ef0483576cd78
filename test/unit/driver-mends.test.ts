import { afterAll, describe, expect, test } from "bun:test";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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

  // The script itself refuses such a mend before it changes any file: a scratch tree of its own
  // (the script finds node_modules and its JSON next to itself).
  test("ThePatchScriptRefusesAMendThatKeepsWhatItReplaces", () => {
    const root = join(dir, "scratch-root");
    const repo = join(dirname(fileURLToPath(import.meta.url)), "../..");
    cpSync(join(repo, "scripts/patch-dependencies.mjs"), join(root, "scripts/patch-dependencies.mjs"));
    const lib = join(root, "node_modules/lib");
    mkdirSync(lib, { recursive: true });
    writeFileSync(join(lib, "package.json"), JSON.stringify({ name: "lib", version: "1.0.0" }));
    writeFileSync(join(lib, "a.js"), "function f() {\n  return 1;\n}\n");
    const write = (to: string) =>
      writeFileSync(join(root, "scripts/dependency-mends.json"), JSON.stringify({ mark: mends.mark, packages: [{ name: "lib", version: "1.0.0", builds: ["."], mends: { "a.js": [{ where: "1: f", from: "function f() {\n", to, count: 1 }] } }] }));
    const run = () => {
      const r = Bun.spawnSync(["node", "scripts/patch-dependencies.mjs"], { cwd: root, stderr: "pipe", stdout: "pipe" });
      return { code: r.exitCode, out: `${r.stdout.toString()}${r.stderr.toString()}`, text: readFileSync(join(lib, "a.js"), "utf8") };
    };
    // Keeps the replaced line, as mend 13's first version did: refused, the file untouched.
    write("function f() {\n  if (globalThis.x) return 2;");
    expect(run()).toEqual({
      code: 1,
      out: `patch-dependencies: lib/a.js: mend "1: f" keeps the text it replaces ("function f() {\\n"), so every later install would find it still to mend\n`,
      text: "function f() {\n  return 1;\n}\n",
    });
    // The same mend written on the line it replaces: applied once, and a second run changes nothing.
    write("function f() { if (globalThis.x) return 2;");
    const mended = `function f() { if (globalThis.x) return 2;${mends.mark}\n  return 1;\n}\n`;
    expect(run()).toEqual({ code: 0, out: "patch-dependencies: mended lib/./a.js\n", text: mended });
    expect(run()).toEqual({ code: 0, out: "", text: mended });
  });

  test("RefusesAnotherVersion", () => {
    const pkg = copyWith("bumped", (p) => rewrite(join(p, "package.json"), '"version": "3.4.9"', '"version": "3.4.10"'));
    expect(driverMendsMissing(pkg)).toBe("postgres 3.4.10 is installed; tern's mends are for 3.4.9");
  });
});
