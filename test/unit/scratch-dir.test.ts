import { describe, expect, test } from "bun:test";
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { scratchDir } from "../support/scratch-dir";

// Was (crash-loop.test.ts): its afterAll removed the servers' directory whatever happened, so a
// failing seed left no server log to read.
describe("a suite's scratch directory keeps its servers' logs when its test failed", () => {
  test("kept, and where said, when the test did not get to its end", () => {
    const said: string[] = [];
    const scratch = scratchDir("cli4-scratch-", (l) => said.push(l));
    writeFileSync(join(scratch.dir, "server.log"), "{}\n");
    try {
      expect(scratch.done()).toBe(true);
      expect(existsSync(join(scratch.dir, "server.log"))).toBe(true);
      expect(said).toEqual([`cli4-scratch: the test did not pass; its servers' logs are kept in ${scratch.dir} (<cluster>/server*.log)`]);
    } finally {
      rmSync(scratch.dir, { recursive: true, force: true });
    }
  });

  test("removed, silently, once it passed", () => {
    const said: string[] = [];
    const scratch = scratchDir("cli4-scratch-", (l) => said.push(l));
    writeFileSync(join(scratch.dir, "server.log"), "{}\n");
    scratch.passed();
    expect([scratch.done(), existsSync(scratch.dir), said]).toEqual([false, false, []]);
  });
});
