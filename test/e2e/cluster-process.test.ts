import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startClusterProcess } from "../../scripts/lib/cluster-process";
import { serverStartTimeout } from "../support/timeouts";

const dir = mkdtempSync(join(tmpdir(), "tern-cluster-process-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("TestAServerStillStartingWhenTheWaitEndsIsSaidSoInPlainWords (bun run demo on a busy machine)", async () => {
  // 50 ms: the process has not opened its port yet.
  const started = startClusterProcess({ name: "clusterA", initialFailoverVersion: 1, dir, startTimeoutMs: 50 });
  const err = (await started.then(
    () => expect.unreachable("the server answered within 50 ms"),
    (e: Error) => e,
  )) as Error;
  expect(err.message).toMatch(/^clusterA did not start: no healthy answer within 50 ms \(nothing listens on 127\.0\.0\.1:\d+ yet; the process is still running\)/);
  expect(err.message).not.toContain("Is the computer able to access the url?");
});

test("TestARestartKeepsTheLogOfTheRunItFollows (a crash test reads the killed run's log)", async () => {
  const options = { name: "clusterA", initialFailoverVersion: 1, dir: join(dir, "restarted") };
  const first = await startClusterProcess(options);
  await first.crash();
  const second = await startClusterProcess({ ...options, port: first.port });
  await second.stop();
  const home = join(options.dir, "clusterA");
  const started = (file: string) => readFileSync(join(home, file), "utf8").split("\n").filter((l) => l.includes(`"msg":"tern server started"`)).length;
  expect(readdirSync(home).filter((f) => f.endsWith(".log")).sort()).toEqual(["server.log", "server.run-1.log"]);
  expect({ killed: started("server.run-1.log"), restarted: started("server.log") }).toEqual({ killed: 1, restarted: 1 });
}, serverStartTimeout);
