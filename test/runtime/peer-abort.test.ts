/**
 * A call to a peer ends when its signal aborts under Node and Deno too, whose fetch holds that
 * link weakly (src/cluster/abortable-fetch.ts): after a garbage collection, a stopping server's
 * replication stream read on, and its stop waited out the limit (exit 1).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { serverEntries } from "./server-process";

const [, node, deno] = serverEntries();
const dir = mkdtempSync(join(tmpdir(), "tern-peer-abort-"));
const bundle = join(dir, "peer-abort.mjs");

beforeAll(async () => {
  const built = await Bun.build({ entrypoints: [join(import.meta.dir, "fixtures/peer-abort.ts")], outdir: dir, naming: "peer-abort.mjs", target: "node", format: "esm" });
  if (!built.success) throw new AggregateError(built.logs, "bundling fixtures/peer-abort.ts failed");
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The fixture's JSON line, run by cmd. */
async function run(cmd: string[]): Promise<unknown> {
  const child = Bun.spawn([...cmd, bundle], { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  if (code !== 0) throw new Error(`${cmd.join(" ")} exited ${code}:\n${err}`);
  return JSON.parse(out.trim().split("\n").at(-1)!);
}

test.skipIf(!node!.present)("TestPeerCallEndsOnAbortAfterGarbageCollection on node: a stream being read and a unary call waiting", async () => {
  expect(await run(["node", "--expose-gc"])).toEqual({ stream: "aborted", unary: "aborted" });
});

test.skipIf(!deno!.present)("TestPeerCallEndsOnAbortAfterGarbageCollection on deno: a stream being read and a unary call waiting", async () => {
  expect(await run([deno!.cmd[0]!, "run", "-A", "--v8-flags=--expose-gc"])).toEqual({ stream: "aborted", unary: "aborted" });
});
