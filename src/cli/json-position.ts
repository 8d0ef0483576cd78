const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
const ESCAPE = /\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})/y;

/**
 * Where JSON.parse's first error is in text, as 1-based line and column (in characters), for text it refused:
 * Bun's messages name no place (`JSON Parse error: Unexpected token '}'`), and a payload read
 * from a file has many lines. Undefined when the text nests too deep to scan.
 */
export function jsonErrorPosition(text: string): { line: number; column: number } | undefined {
  let offset: number;
  try {
    offset = scanValue(text, skipSpace(text, 0));
    offset = skipSpace(text, offset);
    if (offset === text.length) return undefined;
  } catch (e) {
    if (typeof e !== "number") return undefined;
    offset = e;
  }
  const lines = text.slice(0, offset).split("\n");
  // Columns count characters, as editors do, not UTF-16 units (an emoji is one).
  return { line: lines.length, column: [...lines.at(-1)!].length + 1 };
}

function skipSpace(text: string, i: number): number {
  while (i < text.length && " \t\n\r".includes(text[i]!)) i++;
  return i;
}

/** Scans one value starting at i and returns the offset after it; throws the offset of an error. */
function scanValue(text: string, i: number): number {
  const c = text[i];
  if (c === "{" || c === "[") return scanContainer(text, i, c === "{" ? "}" : "]");
  if (c === '"') return scanString(text, i);
  for (const word of ["true", "false", "null"]) if (text.startsWith(word, i)) return i + word.length;
  NUMBER.lastIndex = i;
  if (NUMBER.test(text)) return NUMBER.lastIndex;
  throw i;
}

function scanContainer(text: string, i: number, close: "}" | "]"): number {
  i = skipSpace(text, i + 1);
  if (text[i] === close) return i + 1;
  for (;;) {
    if (close === "}") {
      if (text[i] !== '"') throw i;
      i = skipSpace(text, scanString(text, i));
      if (text[i] !== ":") throw i;
      i = skipSpace(text, i + 1);
    }
    i = skipSpace(text, scanValue(text, i));
    if (text[i] === close) return i + 1;
    if (text[i] !== ",") throw i;
    i = skipSpace(text, i + 1);
  }
}

function scanString(text: string, i: number): number {
  for (i++; i < text.length; ) {
    const c = text[i]!;
    if (c === '"') return i + 1;
    if (c < " ") throw i;
    if (c !== "\\") {
      i++;
      continue;
    }
    ESCAPE.lastIndex = i;
    if (!ESCAPE.test(text)) throw i;
    i = ESCAPE.lastIndex;
  }
  throw i;
}
