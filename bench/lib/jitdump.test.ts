import { expect, test } from "bun:test";
import { perfMap, pidOfDumpName, readJitDump } from "./jitdump";

/** A JITDump file: its header, then records (id, body) each with the 16-byte record header. */
function dump(records: { id: number; body: Uint8Array }[]): Uint8Array {
  const header = new DataView(new ArrayBuffer(40));
  header.setUint32(0, 0x4a695444, true);
  header.setUint32(4, 1, true);
  header.setUint32(8, 40, true);
  const parts: Uint8Array[] = [new Uint8Array(header.buffer)];
  for (const r of records) {
    const h = new DataView(new ArrayBuffer(16));
    h.setUint32(0, r.id, true);
    h.setUint32(4, 16 + r.body.byteLength, true);
    parts.push(new Uint8Array(h.buffer), r.body);
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.byteLength) - p.byteLength);
  return out;
}

/** A CODE_LOAD body: pid, tid, vma, code address, size, index, the name and the code itself. */
function load(address: bigint, name: string, code: number[]): Uint8Array {
  const nameBytes = new TextEncoder().encode(`${name}\0`);
  const body = new Uint8Array(40 + nameBytes.byteLength + code.length);
  const v = new DataView(body.buffer);
  v.setUint32(0, 7, true);
  v.setUint32(4, 8, true);
  v.setBigUint64(8, address, true);
  v.setBigUint64(16, address, true);
  v.setBigUint64(24, BigInt(code.length), true);
  body.set(nameBytes, 40);
  body.set(code, 40 + nameBytes.byteLength);
  return body;
}

test("ReadsEachCodeLoad, skipping other records, as perf map lines", () => {
  const bytes = dump([
    { id: 0, body: load(0x7f00_0000_1000n, "JSC-FTL: readField#DSV2gE", [0x90, 0x90, 0xc3]) },
    { id: 1, body: new Uint8Array(40) }, // a code move: not a load
    { id: 0, body: load(0x7f00_0000_2000n, "JSC-DFG: applyOneTrip#Axbbc9", [0xc3]) },
  ]);
  const codes = readJitDump(bytes);
  expect(codes.map((c) => c.name)).toEqual(["JSC-FTL: readField#DSV2gE", "JSC-DFG: applyOneTrip#Axbbc9"]);
  expect(perfMap(codes)).toBe("7f0000001000 3 JSC-FTL: readField#DSV2gE\n7f0000002000 1 JSC-DFG: applyOneTrip#Axbbc9\n");
});

test("AFileCutShortEndsAtItsLastWholeRecord, and another file is refused", () => {
  const bytes = dump([{ id: 0, body: load(0x1000n, "first", [1]) }, { id: 0, body: load(0x2000n, "second", [1, 2, 3]) }]);
  expect(readJitDump(bytes.subarray(0, bytes.byteLength - 2)).map((c) => c.name)).toEqual(["first"]);
  expect(() => readJitDump(new TextEncoder().encode("not a dump at all"))).toThrow("not a JITDump file");
});

test("TheProcessIdComesFromJscsFileName", () => {
  expect(pidOfDumpName("jit-20584-20579-i1XA7u")).toBe(20579);
  expect(pidOfDumpName("jit-20579.dump")).toBeUndefined();
  expect(pidOfDumpName("perf-20579.map")).toBeUndefined();
});
