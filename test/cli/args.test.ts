import { describe, expect, test } from "bun:test";
import { normalizeAddress } from "../../src/cli/address";
import {
  type FlagSpec,
  getBoolean,
  getString,
  getStrings,
  parseArgs,
  parseKeyValues,
  requireString,
} from "../../src/cli/args";
import { UsageError } from "../../src/cli/errors";

const specs: FlagSpec[] = [
  { name: "namespace", alias: "n", kind: "string", description: "" },
  { name: "cluster", kind: "string", repeated: true, description: "" },
  { name: "global", kind: "boolean", description: "" },
  { name: "output", alias: "o", kind: "string", description: "", choices: ["table", "json"] },
  { name: "reason", kind: "string", description: "" },
  { name: "frontend-address", kind: "string", description: "" },
  { name: "enable-connection", kind: "boolean", description: "" },
];

describe("parseArgs", () => {
  test("--flag value, --flag=value and short aliases", () => {
    const a = parseArgs(["--namespace", "orders", "-o=json", "--reason=a=b"], specs);
    expect(getString(a, "namespace")).toBe("orders");
    expect(getString(a, "output")).toBe("json");
    expect(getString(a, "reason")).toBe("a=b");
    expect(getString(parseArgs(["-n", "x"], specs), "namespace")).toBe("x");
  });

  test("repeated flags keep every value in order; plain flags keep the last", () => {
    const a = parseArgs(["--cluster", "A", "--cluster=B", "-n", "x", "-n", "y"], specs);
    expect(getStrings(a, "cluster")).toEqual(["A", "B"]);
    expect(getString(a, "namespace")).toBe("y");
  });

  test("booleans take no value and accept =false", () => {
    expect(getBoolean(parseArgs(["--global", "pos"], specs), "global")).toBe(true);
    expect(parseArgs(["--global", "pos"], specs).positionals).toEqual(["pos"]);
    expect(getBoolean(parseArgs(["--global=false"], specs), "global")).toBe(false);
    expect(getBoolean(parseArgs(["--global=true"], specs), "global")).toBe(true);
    expect(getBoolean(parseArgs([], specs), "global")).toBe(false);
    expect(() => parseArgs(["--global=maybe"], specs)).toThrow(UsageError);
  });

  test("booleans take a following true or false, and nothing else", () => {
    expect(getBoolean(parseArgs(["--global", "false"], specs), "global")).toBe(false);
    expect(getBoolean(parseArgs(["--global", "TRUE"], specs), "global")).toBe(true);
    const a = parseArgs(["--global", "no", "x"], specs);
    expect(getBoolean(a, "global")).toBe(true);
    expect(a.positionals).toEqual(["no", "x"]);
  });

  test("a short flag's value may be attached, as getopt allows; a one-dash long name still wins", () => {
    const a = parseArgs(["-ojson", "-nprod=eu", "-namespace", "x"], specs);
    expect(getString(a, "output")).toBe("json");
    expect(getStrings(a, "namespace")).toEqual(["x"]);
    expect(getString(parseArgs(["-nprod=eu"], specs), "namespace")).toBe("prod=eu");
    expect(() => parseArgs(["-gx"], specs)).toThrow("unknown flag -gx");
  });

  test("tctl spellings: underscores for dashes and one dash before a long name", () => {
    const a = parseArgs(["-address", "localhost:7233", "--frontend_address", "localhost:8233", "--enable_connection", "false"], [
      ...specs,
      { name: "address", kind: "string", description: "" },
    ]);
    expect(getString(a, "address")).toBe("localhost:7233");
    expect(getString(a, "frontend-address")).toBe("localhost:8233");
    const b = parseArgs(["--frontend_address=localhost:8233", "--enable_connection", "false", "-namespace", "x"], specs);
    expect(getString(b, "frontend-address")).toBe("localhost:8233");
    expect(getBoolean(b, "enable-connection")).toBe(false);
    expect(getString(b, "namespace")).toBe("x");
    expect(() => parseArgs(["-bogus"], specs)).toThrow("unknown flag -bogus");
  });

  test("a string flag takes the next token even when it starts with a dash", () => {
    expect(getString(parseArgs(["--reason", "-x"], specs), "reason")).toBe("-x");
    expect(getString(parseArgs(["--reason", "-5"], specs), "reason")).toBe("-5");
  });

  test("positionals, negative numbers and -- are kept", () => {
    const a = parseArgs(["a", "-3", "--", "--global", "b"], specs);
    expect(a.positionals).toEqual(["a", "-3", "--global", "b"]);
    expect(getBoolean(a, "global")).toBe(false);
  });

  test("unknown flags and missing values are usage errors", () => {
    expect(() => parseArgs(["--nope"], specs)).toThrow("unknown flag --nope");
    expect(() => parseArgs(["-z"], specs)).toThrow("unknown flag -z");
    expect(() => parseArgs(["--namespace"], specs)).toThrow("--namespace needs a value");
  });

  test("a value left out before the next flag is named, not the flag taken for the value", () => {
    // Was: namespace "--reason", and "why" a stray positional.
    expect(() => parseArgs(["-n", "--reason", "why"], specs)).toThrow("-n needs a value (the next word, --reason, is a flag; for a value that starts with -, write -n=VALUE)");
    expect(() => parseArgs(["--namespace", "-o=json"], specs)).toThrow("--namespace needs a value (the next word, -o=json, is a flag");
    // A word that only looks like a flag is a value; so is one given with =.
    expect(getString(parseArgs(["--reason", "--not-a-flag"], specs), "reason")).toBe("--not-a-flag");
    expect(getString(parseArgs(["--reason=--global"], specs), "reason")).toBe("--global");
    expect(getString(parseArgs(["-n", "-1"], specs), "namespace")).toBe("-1");
  });

  test("a short flag with one of its choices attached (-ojson) is a flag, not the value left out before it", () => {
    // Was: namespace "-ojson", and the output a table.
    expect(() => parseArgs(["-n", "-ojson"], specs)).toThrow("-n needs a value (the next word, -ojson, is a flag; for a value that starts with -, write -n=VALUE)");
    expect(() => parseArgs(["--reason", "-oTable"], specs)).toThrow("--reason needs a value (the next word, -oTable, is a flag");
    expect(getString(parseArgs(["-n=-ojson"], specs), "namespace")).toBe("-ojson");
    expect(getString(parseArgs(["--namespace=-ojson"], specs), "namespace")).toBe("-ojson");
    // Any other attached word may be a value: -o takes no "ops".
    expect(getString(parseArgs(["--reason", "-oops"], specs), "reason")).toBe("-oops");
  });

  test("requireString rejects missing and empty values", () => {
    expect(() => requireString(parseArgs([], specs), "namespace")).toThrow("--namespace is required");
    expect(() => requireString(parseArgs(["-n="], specs), "namespace")).toThrow(UsageError);
  });
});

describe("parseKeyValues", () => {
  test("splits at the first = and allows empty values", () => {
    expect(parseKeyValues(["a=1", "b=x=y", "c="], "data")).toEqual({ a: "1", b: "x=y", c: "" });
  });
  test("rejects entries without a key", () => {
    expect(() => parseKeyValues(["novalue"], "data")).toThrow("--data takes KEY=VALUE");
    expect(() => parseKeyValues(["=v"], "data")).toThrow(UsageError);
  });
});

describe("normalizeAddress", () => {
  test.each([
    ["127.0.0.1:7233", "http://127.0.0.1:7233"],
    ["localhost:8233", "http://localhost:8233"],
    ["tern.internal", "http://tern.internal:7233"],
    ["http://h:1/", "http://h:1"],
    ["https://tern.example.com", "https://tern.example.com"],
    ["[::1]:7233", "http://[::1]:7233"],
  ])("%s -> %s", (input, expected) => {
    expect(normalizeAddress(input)).toBe(expected);
  });
  test("rejects other schemes and garbage", () => {
    expect(() => normalizeAddress("ftp://h:1")).toThrow(UsageError);
    expect(() => normalizeAddress("h:notaport")).toThrow(UsageError);
    expect(() => normalizeAddress("")).toThrow(UsageError);
  });
  test("says what is wrong with an IPv6 address without brackets and a port past 65535", () => {
    expect(() => normalizeAddress("::1")).toThrow('--address: "::1" is not host:port or a URL (an IPv6 address goes in brackets: [::1]:7233)');
    expect(() => normalizeAddress("fd00::7:8233")).toThrow("(an IPv6 address goes in brackets: [::1]:7233)");
    expect(() => normalizeAddress("127.0.0.1:72333")).toThrow('--address: "127.0.0.1:72333" is not host:port or a URL (port 72333 is past 65535)');
    expect(() => normalizeAddress("http://h:99999/")).toThrow("(port 99999 is past 65535)");
    expect(() => normalizeAddress("h:notaport")).toThrow('--address: "h:notaport" is not host:port or a URL');
  });
});
