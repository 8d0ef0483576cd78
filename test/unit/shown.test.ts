import { describe, expect, test } from "bun:test";
import { shown } from "../../src/shown";

describe("shown: a client's input in an error message", () => {
  const long = "x".repeat(1_000_000);
  test.each([
    ["a short input, bare, as messages showed it", shown("clusterB"), "clusterB"],
    ["a short input, quoted, as JSON.stringify quoted it", shown('a "b"', { quote: true }), '"a \\"b\\""'],
    ["300 characters, whole", shown("y".repeat(300)), "y".repeat(300)],
    ["301 characters: a prefix, an ellipsis and the length", shown("y".repeat(301)), `"${"y".repeat(300)}…" (301 characters)`],
    ["1 MB, quoted or not: 300 characters of it, an ellipsis and its length", shown(long, { quote: true }), `"${"x".repeat(300)}…" (1000000 characters)`],
    ["a shorter limit", shown("k".repeat(256), { quote: true, max: 40 }), `"${"k".repeat(40)}…" (256 characters)`],
    ["a prefix that would end mid surrogate pair stops before it", shown(`${"a".repeat(39)}😀${"b".repeat(10)}`, { max: 40 }), `"${"a".repeat(39)}…" (51 characters)`],
  ])("%s", (_, got, want) => expect(got).toBe(want));
});
