/**
 * The suite as CI and the README run it: `bun run test`. Runs `bun test` on every
 * suite, then prints the plain closing line CI reads: `N passed, N failed`.
 * PostgreSQL suites run when PostgreSQL is reachable; CI (CI=true) requires it.
 */
import { spawn } from "node:child_process";
import { postgresMissing, postgresReachable } from "./support/postgres";
import { testEnv } from "./support/env";

async function main(): Promise<number> {
  const pg = await postgresReachable();
  if (!pg && testEnv.requirePostgres) {
    console.error(`${postgresMissing()}; CI requires it (see .ci/run).`);
    console.log("0 passed, 1 failed");
    return 1;
  }
  if (!pg) {
    console.warn(`\n!!! ${postgresMissing()}: PostgreSQL suites will be SKIPPED !!!\n`);
  }
  const args = ["test", "--timeout", "60000", ...process.argv.slice(2)];
  const child = spawn(process.execPath, args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, TERN_TEST_POSTGRES: pg ? "1" : "0" },
  });
  let tail = "";
  const keep = (chunk: Buffer, out: NodeJS.WriteStream) => {
    out.write(chunk);
    tail = (tail + chunk.toString()).slice(-4000);
  };
  child.stdout.on("data", (c: Buffer) => keep(c, process.stdout));
  child.stderr.on("data", (c: Buffer) => keep(c, process.stderr));
  const code: number = await new Promise((resolve) => child.on("close", (c) => resolve(c ?? 1)));
  const count = (word: string) => Number(tail.match(new RegExp(`^\\s*(\\d+) ${word}$`, "m"))?.[1] ?? 0);
  const passed = count("pass");
  let failed = count("fail");
  const skipped = count("skip") + count("todo");
  if (code !== 0 && failed === 0) failed = 1; // the runner itself failed (crash, no tests found)
  if (passed === 0 && failed === 0) failed = 1;
  console.log(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
  return failed > 0 ? 1 : 0;
}

process.exit(await main());
