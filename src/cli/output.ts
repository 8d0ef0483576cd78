import { type DescMessage, type MessageShape, toJson } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";

/** Output format chosen with -o/--output. */
export type OutputFormat = "table" | "json";

/** Where a command writes; each call is one chunk of text (include the newline). */
export type Writer = (text: string) => void;

/** Aligned columns with a header row; cells are single-line (newlines become spaces). */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const clean = rows.map((r) => headers.map((_, i) => oneLine(r[i] ?? "")));
  const widths = headers.map((h, i) => Math.max(displayWidth(h), ...clean.map((r) => displayWidth(r[i]!))));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : padColumns(c, widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(headers), ...clean.map(line)].join("\n") + "\n";
}

/** One row padded to fixed widths, for output that streams (show --follow). */
export function formatFixedRow(cells: readonly string[], widths: readonly number[]): string {
  return (
    cells
      .map((c, i) => (i < widths.length ? padColumns(oneLine(c), widths[i]!) : oneLine(c)))
      .join("  ")
      .trimEnd() + "\n"
  );
}

/** `key: value` lines with values aligned; entries whose value is undefined are skipped. */
export function formatKeyValues(entries: readonly (readonly [string, string | undefined])[]): string {
  const shown = entries.filter((e): e is readonly [string, string] => e[1] !== undefined);
  const width = Math.max(0, ...shown.map(([k]) => k.length + 1));
  return shown.map(([k, v]) => `${(k + ":").padEnd(width)}  ${v}`.trimEnd() + "\n").join("");
}

/** The protobuf JSON form of a message (camelCase names), pretty-printed. */
export function messageJson<Desc extends DescMessage>(schema: Desc, msg: MessageShape<Desc>): string {
  return JSON.stringify(toJson(schema, msg), null, 2) + "\n";
}

/** `{ "<key>": [ ...protobuf JSON of each item ] }`, the shape of every list command's -o json. */
export function listJson<Desc extends DescMessage>(key: string, schema: Desc, items: readonly MessageShape<Desc>[]): string {
  return JSON.stringify({ [key]: items.map((m) => toJson(schema, m)) }, null, 2) + "\n";
}

/**
 * listJson's text written an item at a time to out, for a list too large to hold whole or as
 * one string (a history of large payloads: a 138 MB one took the CLI 5 GB as one string, and
 * V8 refuses strings past about 512 MB).
 */
export function createListJsonWriter<Desc extends DescMessage>(out: Writer, key: string, schema: Desc) {
  let written = 0;
  return {
    item(msg: MessageShape<Desc>): void {
      // Indented as JSON.stringify indents an array item two levels down (JSON text holds no raw newline in a string).
      const text = JSON.stringify(toJson(schema, msg), null, 2).replaceAll("\n", "\n    ");
      out(`${written++ === 0 ? `{\n  ${JSON.stringify(key)}: [\n` : ",\n"}    ${text}`);
    },
    end(): void {
      out(written === 0 ? `{\n  ${JSON.stringify(key)}: []\n}\n` : "\n  ]\n}\n");
    },
  };
}

/**
 * JSON text written a value at a time, indented as JSON.stringify(value, null, 2) indents it:
 * open and close objects and arrays, and write values (keyed inside an object) between them.
 */
export function createJsonStream(out: Writer) {
  const levels: { count: number }[] = [];
  const indent = () => "  ".repeat(levels.length);
  const start = (key: string | undefined) => {
    const level = levels.at(-1);
    if (level) out(level.count++ ? ",\n" : "\n");
    out(`${indent()}${key === undefined ? "" : `${JSON.stringify(key)}: `}`);
  };
  return {
    open(key: string | undefined, bracket: "{" | "[") {
      start(key);
      out(bracket);
      levels.push({ count: 0 });
    },
    value(key: string | undefined, value: unknown) {
      start(key);
      out(JSON.stringify(value, null, 2).replaceAll("\n", `\n${indent()}`));
    },
    close(bracket: "}" | "]") {
      const level = levels.pop()!;
      out(level.count ? `\n${indent()}${bracket}` : bracket);
    },
  };
}

/** One message as a single JSON line (NDJSON), for streaming output. */
export function messageJsonLine<Desc extends DescMessage>(schema: Desc, msg: MessageShape<Desc>): string {
  return JSON.stringify(toJson(schema, msg)) + "\n";
}

/** A timestamp as ISO-8601 UTC, or "" when unset. */
export function formatTime(ts: Timestamp | undefined): string {
  if (!ts || (ts.seconds === 0n && ts.nanos === 0)) return "";
  return timestampDate(ts).toISOString();
}

/** `SOME_ENUM_NAME` → `SomeEnumName`; unknown numbers render as the number. */
export function enumLabel(enumObject: Record<number, string>, value: number): string {
  const name = enumObject[value];
  if (!name) return String(value);
  return name
    .toLowerCase()
    .split("_")
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join("");
}

/** Shortens text to max characters, marking the cut with "…". */
export function truncate(text: string, max: number): string {
  // Joined anew: a slice shares the text it was cut from (JavaScriptCore), so a row kept to print
  // later (show's table) kept a whole payload's text alive for its 100 characters.
  return text.length <= max ? text : [...text.slice(0, Math.max(0, max - 1)), "…"].join("");
}

// Characters a terminal shows two columns wide (CJK, Hangul, fullwidth forms, emoji) or none (combining marks, joiners).
const WIDE = /[\u1100-\u115f\u2e80-\u303e\u3041-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6\u{20000}-\u{3fffd}]|\p{Extended_Pictographic}/u;
const ZERO = /[\p{Mn}\p{Me}\u200b-\u200f\ufe00-\ufe0f]/u;

/** The columns text takes in a terminal: padEnd counts UTF-16 units, so a column holding `名前` or `é` (e and a combining accent) lost its alignment. */
export function displayWidth(text: string): number {
  let width = 0;
  for (const c of text) width += ZERO.test(c) ? 0 : WIDE.test(c) ? 2 : 1;
  return width;
}

function padColumns(text: string, width: number): string {
  return text + " ".repeat(Math.max(0, width - displayWidth(text)));
}

function oneLine(text: string): string {
  // A tab or another control character moves the terminal's cursor (a tab to its next stop, \r to the line's start), so padding could not line up after it: a tab is a space, the rest are written as \xHH.
  return text
    .replace(/\s*\n\s*/g, " ")
    .replace(/\t/g, " ")
    .replace(/\p{Cc}/gu, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}
