/**
 * An operator's mistyped start, run as a real process: it exits 1 with one line that names the
 * setting and says what to write, and leaves nothing behind (no data dir, no lock file).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testConfigYaml } from "../support/server";
import { runServerToExit } from "./server-process";

describe("a start with a mistyped input", () => {
  const dir = mkdtempSync(join(tmpdir(), "tern-bad-inputs-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** A config file in dir over a PGlite data dir; returns its path. */
  function configFile(name: string, dataDir: string, extra = ""): string {
    const path = join(dir, `${name}.yaml`);
    writeFileSync(path, testConfigYaml({ store: "pglite", dataLocation: dataDir }) + extra);
    return path;
  }

  /** The output after the log line a start writes as it opens the database (it names the dir too). */
  const afterOpening = (output: string) => output.trim().replace(/^\{[^\n]*"msg":"opening the database"[^\n]*\}\n/, "");

  test("TestAConfigPathThatIsNotThereIsNamedWithTheVariableThatGaveIt", async () => {
    const missing = join(dir, "no-such.yaml");
    const r = await runServerToExit([], { TERN_CONFIG: missing });
    expect([r.code, r.output.trim()]).toEqual([1, `cannot read config file ${missing} (TERN_CONFIG): no such file (ENOENT)`]);
  });

  test("TestATypoedKeyIsRefusedWithTheKeysItsPlaceTakes, the data dir never made", async () => {
    const dataDir = join(dir, "typo", "db");
    const path = configFile("typo", dataDir, "persistance: { numHistoryShards: 8 }\n");
    const r = await runServerToExit(["--config", path]);
    expect([r.code, r.output.trim()]).toEqual([
      1,
      `${path}: persistance: unknown key; the keys here are clusterMetadata, persistence, services, dcRedirectionPolicy, limits, log, replication`,
    ]);
    expect(existsSync(dataDir)).toBe(false);
  });

  test("TestABindOnIPThatDoesNotResolveIsRefusedBeforeTheDataDirIsMade, on an ephemeral port too", async () => {
    const dataDir = join(dir, "unresolved", "db");
    const path = join(dir, "unresolved.yaml");
    const yaml = testConfigYaml({ store: "pglite", dataLocation: dataDir });
    expect(yaml).toContain("bindOnIP: 127.0.0.1, port: 0");
    writeFileSync(path, yaml.replace("bindOnIP: 127.0.0.1, port: 0", "bindOnIP: tern-no-such-host.invalid, port: 0"));
    const r = await runServerToExit(["--config", path]);
    // Was: PGlite made and migrated, then "Failed to listen at tern-no-such-host.invalid".
    expect(r.code).toBe(1);
    // EAI_AGAIN where no name server answers.
    expect(r.output.trim()).toMatch(/^tern server failed to start: cannot listen on tern-no-such-host\.invalid:0 \(services\.frontend\.rpc\.bindOnIP\): the host name does not resolve \((ENOTFOUND|EAI_AGAIN)\)$/);
    expect(existsSync(dataDir)).toBe(false);
  });

  // /proc takes no new directory, whoever runs the test (a read-only directory does not stop root).
  test.if(process.platform === "linux")("TestAPGliteDataDirThatCannotBeMadeIsNamedAsTheSetting", async () => {
    const dataDir = `/proc/tern-bad-inputs-${process.pid}/db`;
    const r = await runServerToExit(["--config", configFile("proc", dataDir)]);
    expect(r.code).toBe(1);
    expect(afterOpening(r.output)).toStartWith(`tern server failed to start: the PGlite data directory ${dataDir} (persistence.datastore.pglite.dataDir) cannot be created: ENOENT`);
  });

  test.if(process.platform === "linux" && process.getuid?.() !== 0)("TestAPGliteDataDirNotWritableIsNamedAsTheSetting, nothing left in it", async () => {
    const dataDir = join(dir, "read-only");
    mkdirSync(dataDir, { mode: 0o555 });
    const r = await runServerToExit(["--config", configFile("read-only", dataDir)]);
    expect(r.code).toBe(1);
    expect(afterOpening(r.output)).toStartWith(`tern server failed to start: the PGlite data directory ${dataDir} (persistence.datastore.pglite.dataDir) cannot be written: EACCES`);
    expect(readdirSync(dataDir)).toEqual([]);
  });
});
