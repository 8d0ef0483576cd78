import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startClusterProcess } from "../../scripts/lib/cluster-process";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** The environment of a running process, from /proc. */
const environOf = (pid: number) => new Map(readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));

// /proc and execve: Linux (the Bun server does not re-execute itself on Windows).
describe.skipIf(process.platform !== "linux")("the Bun server process's start settings: allocator purge delay, GC markers, no FTL tier (src/main.ts)", () => {
  // One GC marker where the machine has two cores or fewer (JavaScriptCore's own default elsewhere).
  const markers = navigator.hardwareConcurrency <= 2 ? "1" : undefined;
  // Likewise JavaScriptCore's top JIT tier off (its compiles took the two cores' CPU).
  const ftl = navigator.hardwareConcurrency <= 2 ? "0" : undefined;
  const operatorSet = ["MIMALLOC_PURGE_DELAY", "BUN_JSC_numberOfGCMarkers", "BUN_JSC_useFTLJIT"].some((k) => process.env[k] !== undefined);
  const dir = mkdtempSync(join(tmpdir(), "tern-alloc-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** A --preload script that appends `<MIMALLOC_PURGE_DELAY> <pid>` to marks each time a process loads it. */
  const marking = (name: string) => {
    const marks = join(dir, `${name}.marks`);
    const preload = join(dir, `${name}.preload.ts`);
    writeFileSync(preload, `require("node:fs").appendFileSync(${JSON.stringify(marks)}, \`\${process.env.MIMALLOC_PURGE_DELAY} \${process.pid}\\n\`);\n`);
    return { preload, marks: () => readFileSync(marks, "utf8").trim().split("\n") };
  };

  // With a delay set in this process's environment, the server inherits it: nothing to re-execute for.
  test.skipIf(operatorSet)("ServesWithASecondsDelay: re-executed as the same process, runtime flags kept", async () => {
    const m = marking("default");
    const p = await startClusterProcess({ name: "default", initialFailoverVersion: 1, dir, runtimeArgs: ["--preload", m.preload] });
    try {
      expect(environOf(p.pid).get("MIMALLOC_PURGE_DELAY")).toBe("1000");
      expect(environOf(p.pid).get("BUN_JSC_numberOfGCMarkers")).toBe(markers);
      expect(environOf(p.pid).get("BUN_JSC_useFTLJIT")).toBe(ftl);
      // The preload ran before the re-exec (no delay set) and in the server after it: one pid.
      expect(m.marks()).toEqual([`undefined ${p.pid}`, `1000 ${p.pid}`]);
      expect((await fetch(`http://${p.address}/health`)).status).toBe(200);
    } finally {
      expect(await p.stop()).toBe(0);
    }
  });

  // The sampling profiler's signal could kill a process re-executing itself (src/main.ts).
  test.skipIf(operatorSet || markers === undefined)("StaysPutUnderTheCpuProfiler: no re-exec, the settings it would set named in a warning", async () => {
    const m = marking("profiled");
    const runtimeArgs = ["--cpu-prof-md", `--cpu-prof-dir=${dir}`, "--cpu-prof-name=profiled.md", "--preload", m.preload];
    const p = await startClusterProcess({ name: "profiled", initialFailoverVersion: 1, dir, runtimeArgs });
    try {
      expect(environOf(p.pid).get("BUN_JSC_useFTLJIT")).toBeUndefined();
      expect(m.marks()).toEqual([`undefined ${p.pid}`]);
      expect(readFileSync(p.logPath, "utf8")).toContain("under the CPU profiler, not restarting with MIMALLOC_PURGE_DELAY=1000 BUN_JSC_numberOfGCMarkers=1 BUN_JSC_useFTLJIT=0");
      expect((await fetch(`http://${p.address}/health`)).status).toBe(200);
    } finally {
      expect(await p.stop(60_000)).toBe(0);
    }
    expect(readFileSync(join(dir, "profiled.md"), "utf8")).toContain("# CPU Profile");
  });

  test("KeepsTheOperatorsSettings: no re-exec when all are set", async () => {
    const m = marking("operator");
    const env = { MIMALLOC_PURGE_DELAY: "250", BUN_JSC_numberOfGCMarkers: "2", BUN_JSC_useFTLJIT: "1" };
    const p = await startClusterProcess({ name: "operator", initialFailoverVersion: 1, dir, runtimeArgs: ["--preload", m.preload], env });
    try {
      expect(environOf(p.pid).get("MIMALLOC_PURGE_DELAY")).toBe("250");
      expect(environOf(p.pid).get("BUN_JSC_numberOfGCMarkers")).toBe("2");
      expect(environOf(p.pid).get("BUN_JSC_useFTLJIT")).toBe("1");
      expect(m.marks()).toEqual([`250 ${p.pid}`]);
    } finally {
      expect(await p.stop()).toBe(0);
    }
  });

  test.skipIf(markers === undefined || process.env.BUN_JSC_numberOfGCMarkers !== undefined || process.env.BUN_JSC_useFTLJIT !== undefined)("SetsTheOthersWhenTheDelayIsSet: the operator's delay kept, markers and FTL set", async () => {
    const m = marking("delay-only");
    const p = await startClusterProcess({ name: "delay-only", initialFailoverVersion: 1, dir, runtimeArgs: ["--preload", m.preload], env: { MIMALLOC_PURGE_DELAY: "250" } });
    try {
      expect(environOf(p.pid).get("MIMALLOC_PURGE_DELAY")).toBe("250");
      expect(environOf(p.pid).get("BUN_JSC_numberOfGCMarkers")).toBe("1");
      expect(environOf(p.pid).get("BUN_JSC_useFTLJIT")).toBe("0");
      expect(m.marks()).toEqual([`250 ${p.pid}`, `250 ${p.pid}`]);
    } finally {
      expect(await p.stop()).toBe(0);
    }
  });
});
