/**
 * bun bench/jitdump-map.ts [DIR]: writes /tmp/perf-<pid>.map for each process with JITDump
 * files in DIR (default /tmp), so `perf report` names its JIT-compiled JavaScript. Run it after
 * `perf record` of a server started with BUN_JSC_useJITDump=1, before `perf report`
 * (bench/README.md, 2026-12-05).
 */
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { perfMap, pidOfDumpName, readJitDump, type JitCode } from "./lib/jitdump";

const dir = process.argv[2] ?? "/tmp";
const byPid = new Map<number, JitCode[]>();
for (const name of readdirSync(dir)) {
  const pid = pidOfDumpName(name);
  if (pid === undefined) continue;
  const codes = readJitDump(readFileSync(join(dir, name)));
  byPid.set(pid, [...(byPid.get(pid) ?? []), ...codes]);
}
if (!byPid.size) {
  console.error(`no JITDump files (jit-<tid>-<pid>-<random>) in ${dir}: start the server with BUN_JSC_useJITDump=1`);
  process.exit(1);
}
for (const [pid, codes] of byPid) {
  const path = `/tmp/perf-${pid}.map`;
  writeFileSync(path, perfMap(codes));
  console.log(`${path}: ${codes.length} pieces of code`);
}
