import { describe, expect, test } from "bun:test";
import { join } from "node:path";

const root = join(import.meta.dir, "../..");

/** Runs bun with args in the repository, PostgreSQL turned off (or at url), CI as given (the runner's own settings left out). */
async function bun(args: string[], ci: boolean, url = "off"): Promise<{ code: number; stdout: string; stderr: string }> {
  const { CI: _ci, TERN_TEST_REQUIRE_POSTGRES: _required, TERN_TEST_POSTGRES: _checked, ...env } = process.env;
  const child = Bun.spawn([process.execPath, ...args], {
    cwd: root,
    env: { ...env, TERN_TEST_POSTGRES_URL: url, ...(ci ? { CI: "true" } : {}) },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { code, stdout, stderr };
}

const stores = ["-e", 'import { testStores } from "./test/support/stores"; console.log(JSON.stringify(await testStores()));'];

// Was: "PostgreSQL not reachable at off", as if "off" were an address that did not answer.
describe("TERN_TEST_POSTGRES_URL=off: the runner and the suites say PostgreSQL was turned off", () => {
  test("bun run test skips the PostgreSQL suites, saying they were turned off", async () => {
    const r = await bun(["test/run.ts", "test/cli/duration.test.ts"], false);
    expect(r.stderr).toContain("\n!!! PostgreSQL is turned off (TERN_TEST_POSTGRES_URL=off): PostgreSQL suites will be SKIPPED !!!\n");
    expect(r.stderr).not.toContain("not reachable");
    expect([r.code, r.stdout.trimEnd().split("\n").at(-1)]).toEqual([0, expect.stringMatching(/^[1-9]\d* passed, 0 failed$/)]);
  });

  test("with CI=true the runner fails, saying PostgreSQL was turned off", async () => {
    const r = await bun(["test/run.ts", "test/cli/duration.test.ts"], true);
    expect([r.code, r.stdout, r.stderr]).toEqual([1, "0 passed, 1 failed\n", "PostgreSQL is turned off (TERN_TEST_POSTGRES_URL=off); CI requires it (see .ci/run).\n"]);
  });

  test("a suite's testStores runs PGlite only, saying PostgreSQL was turned off; with CI=true it throws so", async () => {
    const local = await bun(stores, false);
    expect([local.code, local.stdout]).toEqual([0, '["pglite"]\n']);
    expect(local.stderr).toBe("\n!!! PostgreSQL is turned off (TERN_TEST_POSTGRES_URL=off): PostgreSQL suites SKIPPED (PGlite only) !!!\n\n");
    const ci = await bun(stores, true);
    expect(ci.code).toBe(1);
    expect(ci.stderr).toContain("error: PostgreSQL is turned off (TERN_TEST_POSTGRES_URL=off); CI requires it");
  });
});

// Was: the URL as given, so a password in it was printed with the warning, in CI logs too.
describe("TERN_TEST_POSTGRES_URL with a password: the runner and the suites show it masked", () => {
  // Port 1: nothing listens, the connection is refused at once.
  const url = "postgres://tern:s3cret@127.0.0.1:1/postgres?password=s3cret";

  test("the runner's CI refusal and a suite's warning show the URL without the password", async () => {
    const ci = await bun(["test/run.ts", "test/cli/duration.test.ts"], true, url);
    expect([ci.code, ci.stderr]).toEqual([1, "PostgreSQL is not reachable at postgres://tern:***@127.0.0.1:1/postgres?password=***; CI requires it (see .ci/run).\n"]);
    const local = await bun(stores, false, url);
    expect(local.stderr).toContain("PostgreSQL is not reachable at postgres://tern:***@127.0.0.1:1/postgres?password=***: PostgreSQL suites SKIPPED");
    expect(local.stderr + ci.stderr + ci.stdout).not.toContain("s3cret");
  });
});
