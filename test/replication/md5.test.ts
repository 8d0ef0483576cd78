import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { createMd5 } from "../../replication/md5";

describe("md5", () => {
  test("TestSavedAndTakenUpDigestEqualsNodes: any split of the input, the state saved between parts through JSON", () => {
    for (let t = 0; t < 200; t++) {
      // Strings (multi-byte characters among them) and bytes, of lengths around the 64-byte block and its 56-byte end.
      const parts = Array.from({ length: 1 + (t % 6) }, (_, i) => (i % 2 ? crypto.getRandomValues(new Uint8Array((t * 7 + i * 13) % 130)) : "ünï✓|".repeat((t + i) % 30)));
      const node = createHash("md5");
      let md5 = createMd5();
      for (const p of parts) {
        node.update(p);
        md5 = createMd5(JSON.parse(JSON.stringify(md5.update(p).state())));
      }
      expect(md5.hex()).toBe(node.digest("hex"));
    }
    expect(createMd5().hex()).toBe("d41d8cd98f00b204e9800998ecf8427e");
    // A text longer than one chunk of encoding, a surrogate pair across the chunk's end.
    const emoji = "a" + "😀".repeat(200_000);
    expect(createMd5().update("|").update(emoji).hex()).toBe(createHash("md5").update("|").update(emoji).digest("hex"));
    // Unaligned input (a subarray at an odd offset) and a long one.
    const big = crypto.getRandomValues(new Uint8Array(1 << 20));
    expect(createMd5().update(big.subarray(3)).hex()).toBe(createHash("md5").update(big.subarray(3)).digest("hex"));
  });

  test("TestABadStateIsRefused: a tail of a whole block", () => {
    expect(() => createMd5({ words: [0, 0, 0, 0], tail: btoa("x".repeat(64)), length: 64 })).toThrow("must be shorter than a block");
  });
});
