/**
 * MD5 (RFC 1321) whose state can be saved and taken up again: GetExecutionChecksums digests
 * a run of many gigabytes over several calls, carrying the digest so far in its page token
 * (node:crypto's hashes cannot be saved). Equal to createHash("md5") over the same bytes.
 */

/** A digest's state between two updates: its four words, the bytes of an unfinished block, and how many bytes it took. */
export interface Md5State {
  words: [number, number, number, number];
  /** base64 of the bytes after the last whole 64-byte block. */
  tail: string;
  length: number;
}

const S = Int32Array.from([7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
  4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21]);
const K = Int32Array.from({ length: 64 }, (_, i) => Math.floor(Math.abs(Math.sin(i + 1)) * 2 ** 32) | 0);
/** Characters of a string encoded at a time (three bytes each at most). */
const TEXT_CHUNK = 1 << 18;

const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;
const INITIAL: Md5State["words"] = [0x67452301, 0xefcdab89 | 0, 0x98badcfe | 0, 0x10325476];

/** A digest started afresh, or taken up from a saved state. */
export function createMd5(from?: Md5State) {
  const h = Int32Array.from(from?.words ?? INITIAL);
  const block = new Uint8Array(64);
  const m = new Int32Array(16);
  const tail = from ? Uint8Array.from(atob(from.tail), (c) => c.charCodeAt(0)) : new Uint8Array(0);
  if (tail.length >= 64) throw new Error("an MD5 state's tail must be shorter than a block");
  block.set(tail);
  let filled = tail.length;
  let length = from?.length ?? 0;
  const encoder = new TextEncoder();
  const work = new Uint8Array(64 + 3 * TEXT_CHUNK);

  // The four rounds as four loops without branches: about twice as fast as one loop choosing its round.
  function compress(m: Int32Array, at: number) {
    let a = h[0]!, x = h[1]!, c = h[2]!, d = h[3]!, t = 0;
    for (let i = 0; i < 16; i++) {
      t = (a + ((x & c) | (~x & d)) + K[i]! + m[at + i]!) | 0;
      (a = d), (d = c), (c = x), (x = (x + ((t << S[i]!) | (t >>> (32 - S[i]!)))) | 0);
    }
    for (let i = 16; i < 32; i++) {
      t = (a + ((d & x) | (~d & c)) + K[i]! + m[at + ((5 * i + 1) & 15)]!) | 0;
      (a = d), (d = c), (c = x), (x = (x + ((t << S[i]!) | (t >>> (32 - S[i]!)))) | 0);
    }
    for (let i = 32; i < 48; i++) {
      t = (a + (x ^ c ^ d) + K[i]! + m[at + ((3 * i + 5) & 15)]!) | 0;
      (a = d), (d = c), (c = x), (x = (x + ((t << S[i]!) | (t >>> (32 - S[i]!)))) | 0);
    }
    for (let i = 48; i < 64; i++) {
      t = (a + (c ^ (x | ~d)) + K[i]! + m[at + ((7 * i) & 15)]!) | 0;
      (a = d), (d = c), (c = x), (x = (x + ((t << S[i]!) | (t >>> (32 - S[i]!)))) | 0);
    }
    h[0] = (h[0]! + a) | 0;
    h[1] = (h[1]! + x) | 0;
    h[2] = (h[2]! + c) | 0;
    h[3] = (h[3]! + d) | 0;
  }

  /** Whole blocks of bytes (a multiple of 64 long), read as little-endian words. */
  function compressBlocks(bytes: Uint8Array) {
    if (LITTLE_ENDIAN) {
      // A copy to align them costs less than assembling each word from its bytes.
      const aligned = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
      const words = new Int32Array(aligned.buffer, aligned.byteOffset, aligned.length / 4);
      for (let at = 0; at < words.length; at += 16) compress(words, at);
      return;
    }
    for (let at = 0; at < bytes.length; at += 64) {
      for (let i = 0; i < 16; i++) m[i] = bytes[at + 4 * i]! | (bytes[at + 4 * i + 1]! << 8) | (bytes[at + 4 * i + 2]! << 16) | (bytes[at + 4 * i + 3]! << 24);
      compress(m, 0);
    }
  }

  function update(data: Uint8Array | string) {
    if (typeof data === "string") {
      for (let at = 0; at < data.length; ) at = updateText(data, at);
      return api;
    }
    length += data.length;
    let i = 0;
    if (filled > 0) {
      const n = Math.min(64 - filled, data.length);
      block.set(data.subarray(0, n), filled);
      filled += n;
      i = n;
      if (filled < 64) return api;
      compressBlocks(block);
      filled = 0;
    }
    const whole = (data.length - i) & ~63;
    compressBlocks(data.subarray(i, i + whole));
    block.set(data.subarray(i + whole), 0);
    filled = data.length - i - whole;
    return api;
  }

  /**
   * Takes up to TEXT_CHUNK characters of text from `at` (never half a surrogate pair), encoded
   * behind the unfinished block's bytes in one aligned buffer: no copy of a whole event's text
   * (events of 60 MB), no word assembled from bytes. Returns where the next chunk starts.
   */
  function updateText(text: string, at: number): number {
    let end = Math.min(at + TEXT_CHUNK, text.length);
    const last = text.charCodeAt(end - 1);
    if (end < text.length && last >= 0xd800 && last <= 0xdbff) end--;
    work.set(block.subarray(0, filled));
    const { written } = encoder.encodeInto(text.substring(at, end), work.subarray(filled));
    length += written;
    const total = filled + written;
    const whole = total & ~63;
    compressBlocks(work.subarray(0, whole));
    block.set(work.subarray(whole, total));
    filled = total - whole;
    return end;
  }

  const api = {
    update,
    /** The state to take up again with createMd5(state). */
    state: (): Md5State => ({ words: [h[0]!, h[1]!, h[2]!, h[3]!], tail: btoa(String.fromCharCode(...block.subarray(0, filled))), length }),
    /** The digest as 32 hex digits; the state is spent. */
    hex(): string {
      const bits = length * 8;
      const pad = new Uint8Array(((filled < 56 ? 56 : 120) - filled) + 8);
      pad[0] = 0x80;
      const view = new DataView(pad.buffer);
      view.setUint32(pad.length - 8, bits >>> 0, true);
      view.setUint32(pad.length - 4, Math.floor(bits / 2 ** 32), true);
      update(pad);
      // Each word's bytes low first.
      return Array.from({ length: 16 }, (_, i) => ((h[i >> 2]! >>> (8 * (i & 3))) & 255).toString(16).padStart(2, "0")).join("");
    },
  };
  return api;
}
