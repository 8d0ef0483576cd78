/**
 * JavaScriptCore's JITDump files as a perf map, so that `perf report` names the JIT-compiled
 * JavaScript frames of a Bun process (bench/README.md, 2026-12-05). A server started with
 * `BUN_JSC_useJITDump=1` writes one file per compiling thread, `/tmp/jit-<tid>-<pid>-<random>`;
 * perf's own `perf inject --jit` looks only for `jit-<pid>.dump`, but `perf report` reads a
 * plain `/tmp/perf-<pid>.map` ("<address> <size> <name>" per line, hex) for code it cannot
 * place. Format: linux/tools/perf/Documentation/jitdump-specification.txt.
 */

/** A piece of code the JIT loaded: where, how long, and its name ("JSC-FTL: name#hash"). */
export interface JitCode {
  address: bigint;
  size: bigint;
  name: string;
}

const MAGIC = 0x4a695444; // "JiTD", written little-endian
const CODE_LOAD = 0;

/** The code loads a JITDump file holds, in order; a file cut short (still being written) ends at its last whole record. */
export function readJitDump(bytes: Uint8Array): JitCode[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 12 || view.getUint32(0, true) !== MAGIC) throw new Error("not a JITDump file (no JiTD magic)");
  const codes: JitCode[] = [];
  const utf8 = new TextDecoder();
  for (let at = view.getUint32(8, true); at + 16 <= bytes.byteLength; ) {
    const id = view.getUint32(at, true);
    const size = view.getUint32(at + 4, true);
    if (size < 16 || at + size > bytes.byteLength) break;
    if (id === CODE_LOAD) {
      // pid, tid (u32 each), vma, code_addr, code_size, code_index (u64 each), then the name, NUL-ended.
      const nameAt = at + 16 + 40;
      const nameEnd = bytes.indexOf(0, nameAt);
      if (nameEnd < 0 || nameEnd >= at + size) break;
      codes.push({ address: view.getBigUint64(at + 16 + 16, true), size: view.getBigUint64(at + 16 + 24, true), name: utf8.decode(bytes.subarray(nameAt, nameEnd)) });
    }
    at += size;
  }
  return codes;
}

/** A perf map's text for the codes. */
export function perfMap(codes: readonly JitCode[]): string {
  return codes.map((c) => `${c.address.toString(16)} ${c.size.toString(16)} ${c.name.replace(/\s+/g, " ")}\n`).join("");
}

/** The process id in a JSC JITDump file's name (`jit-<tid>-<pid>-<random>`), or undefined for another file. */
export function pidOfDumpName(name: string): number | undefined {
  const m = /^jit-\d+-(\d+)-[^-]+$/.exec(name);
  return m ? Number(m[1]) : undefined;
}
