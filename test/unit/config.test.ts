import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { ConfigError, loadConfig, parseConfig, parseServerArgs, resolveConfigPath } from "../../src/config/load";
import { DEFAULT_RETRY_POLICY, retryPolicy } from "../../replication/retry-policy";

const base = (meta: string, rest = "") => `
clusterMetadata:
${meta}
${rest}`;
const good = `  enableGlobalNamespace: true
  failoverVersionIncrement: 100
  masterClusterName: clusterA
  currentClusterName: clusterA
  clusterInformation:
    clusterA: { enabled: true, initialFailoverVersion: 1, rpcAddress: "127.0.0.1:7233" }`;

const fails = (yaml: string, message: string | RegExp) => {
  expect(() => parseConfig(yaml)).toThrow(ConfigError);
  expect(() => parseConfig(yaml)).toThrow(message);
};

describe("config", () => {
  test("defaults: 4 shards, PGlite ./data, 7233, noop, Temporal's limits", () => {
    const c = parseConfig(base(good));
    expect(c.persistence.numHistoryShards).toBe(4);
    expect(c.persistence.datastore).toEqual({ pglite: { dataDir: "./data" } });
    expect(c.services.frontend.rpc.port).toBe(7233);
    expect(c.dcRedirectionPolicy.policy).toBe("noop");
    expect(c.limits.blobSizeLimitError).toBe(2 * 1024 * 1024);
    expect(c.limits.blobSizeLimitWarn).toBe(512 * 1024);
    expect(c.limits.historyCountLimitError).toBe(51_200);
    expect(c.limits.historyCountLimitWarn).toBe(10_240);
  });

  test("the shipped configs parse", () => {
    for (const f of ["development", "cluster-a", "cluster-b", "cluster-c"]) {
      const c = parseConfig(readFileSync(`config/${f}.yaml`, "utf8"), {}, f);
      expect(c.clusterMetadata.clusterInformation[c.clusterMetadata.currentClusterName]).toBeDefined();
    }
    const b = parseConfig(readFileSync("config/cluster-b.yaml", "utf8"));
    expect(b.services.frontend.rpc.port).toBe(8233);
    expect(b.clusterMetadata.clusterInformation.clusterB!.initialFailoverVersion).toBe(2);
  });

  test("each shipped config has its own data dir, none inside another's (rm -rf data wipes the development cluster's only)", () => {
    // Was: ./data/cluster-a, -b and -c inside development.yaml's ./data.
    const dirs = ["development", "cluster-a", "cluster-b", "cluster-c"].map((f) => {
      const store = parseConfig(readFileSync(`config/${f}.yaml`, "utf8"), {}, f).persistence.datastore;
      return resolve("pglite" in store ? store.pglite.dataDir : "");
    });
    expect(dirs.map((d) => d.slice(resolve(".").length))).toEqual(["/data", "/data-cluster-a", "/data-cluster-b", "/data-cluster-c"]);
    const nested = dirs.flatMap((inner) => dirs.filter((outer) => outer !== inner && inner.startsWith(`${outer}/`)).map((outer) => `${inner} in ${outer}`));
    expect(nested).toEqual([]);
  });

  test("initialFailoverVersion must be below the increment, naming the key and the value given", () => {
    fails(base(good.replace("initialFailoverVersion: 1", "initialFailoverVersion: 100")),
      "config: clusterMetadata.clusterInformation.clusterA.initialFailoverVersion: 100 is not below 100 (failoverVersionIncrement)");
  });

  test("a value past a bound names the key, the value given and the bound, in one wording for every bounded key", () => {
    // Before: zod's "Too small: expected number to be >=1", naming neither the value nor what it is.
    fails(base(good, "persistence: { numHistoryShards: 0 }"), /^config: persistence.numHistoryShards: 0 is below the least, 1$/);
    fails(base(good, "services: { frontend: { rpc: { port: 70000 } } }"), /^config: services.frontend.rpc.port: 70000 is above the most, 65535$/);
    fails(base(good, "limits: { blobSizeLimitError: 0 }"), /^config: limits.blobSizeLimitError: 0 is below the least, 1$/);
    fails(base(good, "limits: { hostRps: { rps: -5, burst: 1 } }"), /^config: limits.hostRps.rps: -5 is below the least, 0$/);
    fails(base(good.replace("failoverVersionIncrement: 100", "failoverVersionIncrement: 1")), /^config: clusterMetadata.failoverVersionIncrement: 1 is below the least, 2$/);
    // The key's own bound, not the safe integer range zod checks first.
    fails(base(good, "replication: { pageSize: 1e21 }"), /^config: replication.pageSize: 1e\+21 is above the most, 1000$/);
    fails(base(good, "persistence: { numHistoryShards: 2.5 }"), /^config: persistence.numHistoryShards: 2.5 is not a whole number$/);
    fails(base(good.replace("masterClusterName: clusterA", 'masterClusterName: ""')), /^config: clusterMetadata.masterClusterName: is empty \(expected a string of at least 1 character\)$/);
    // The rules across keys say it alike, naming the other key.
    fails(base(good, "limits: { blobSizeLimitError: 4096, blobSizeLimitWarn: 8192 }"), /^config: limits.blobSizeLimitWarn: 8192 is above the most, 4096 \(limits.blobSizeLimitError\)$/);
    fails(base(good, "limits: { historyCountLimitWarn: 60000 }"), /^config: limits.historyCountLimitWarn: 60000 is above the most, 51200 \(limits.historyCountLimitError\)$/);
  });

  test("initial version 0 only without global namespaces", () => {
    fails(base(good.replace("initialFailoverVersion: 1", "initialFailoverVersion: 0")), "must be > 0 when");
    const ok = good.replace("initialFailoverVersion: 1", "initialFailoverVersion: 0").replace("enableGlobalNamespace: true", "enableGlobalNamespace: false");
    expect(parseConfig(base(ok)).clusterMetadata.clusterInformation.clusterA!.initialFailoverVersion).toBe(0);
  });

  test("the current cluster cannot be disabled (enabled: false was read by nothing, and the cluster served on)", () => {
    fails(base(good.replace("enabled: true", "enabled: false")),
      "config: clusterMetadata.clusterInformation.clusterA.enabled is false, but clusterA is this cluster (currentClusterName), which cannot be disabled; to stop replicating with a peer, tern admin cluster upsert-remote-cluster --frontend_address HOST:PORT --enable_connection false");
  });

  test("distinct initial versions; current cluster listed", () => {
    const two = good + `\n    clusterB: { enabled: true, initialFailoverVersion: 1, rpcAddress: "x:1" }`;
    fails(base(two), "clusterMetadata.clusterInformation.clusterB.initialFailoverVersion must differ from clusterA's (1)");
    fails(base(good.replace("currentClusterName: clusterA", "currentClusterName: nope")), "currentClusterName nope must be a key");
  });

  test("a rate limit is disabled by rps 0 alone, as the README says: a burst is needed only while rps is above 0", () => {
    const limits = (l: string) => parseConfig(base(good, `limits:\n${l}`)).limits;
    expect(limits("  namespaceRps: { rps: 0, burst: 0 }").namespaceRps).toEqual({ rps: 0, burst: 0 });
    expect(limits("  hostRps: { rps: 0 }").hostRps).toEqual({ rps: 0, burst: 0 });
    expect(limits("  hostRps: { rps: 50, burst: 7 }").hostRps).toEqual({ rps: 50, burst: 7 });
    fails(base(good, "limits:\n  hostRps: { rps: 5, burst: 0 }"), "config: limits.hostRps.burst: is required (number), at least 1, while rps is above 0 (rps 0 disables the limit)");
  });

  test("type errors and unknown keys name the key", () => {
    fails(base(good, "persistence:\n  numHistoryShards: zero"), "persistence.numHistoryShards");
    fails(base(good, "persistence:\n  numHistoryShard: 4"), "persistence");
    fails(base(good, "dcRedirectionPolicy:\n  policy: sometimes"), "dcRedirectionPolicy.policy");
    fails("clusterMetadata: [", "not valid YAML");
    fails("log: { level: info }", "clusterMetadata");
  });

  test("what to write instead: a key left out is required, a typo'd key is named with the keys its place takes, an empty file says so", () => {
    fails(base(good.replace("masterClusterName", "masterClustername")), "config: clusterMetadata.masterClusterName: is required (string)");
    fails(base(good, "limits: { hostRps: { rps: 10 } }"), "config: limits.hostRps.burst: is required (number)");
    fails(base(good, "persistance: { numHistoryShards: 8 }"),
      "config: persistance: unknown key; the keys here are clusterMetadata, persistence, services, dcRedirectionPolicy, limits, log, replication");
    fails(base(good, "log: { levl: debug }"), "config: log.levl: unknown key; the keys here are level");
    fails(base(good, "persistence:\n  # numHistoryShards: 8"), "config: persistence: has no value (expected object)");
    fails("", "config: the file is empty; it needs at least clusterMetadata");
    fails("# all commented out\n", "config: the file is empty; it needs at least clusterMetadata");
    // The line and column, without the excerpt's colon.
    fails(base(good, "log:\n  level: [info,\n x: 1"), /^config: not valid YAML: .* at line \d+, column \d+$/);
  });

  test("a config file that cannot be read is named with the setting that chose it and why, in words", () => {
    const missing = "/tmp/tern-no-such-dir/tern.yaml";
    expect(() => loadConfig(missing, { TERN_CONFIG: missing })).toThrow(`cannot read config file ${missing} (TERN_CONFIG): no such file (ENOENT)`);
    expect(() => loadConfig(missing, {})).toThrow(`cannot read config file ${missing} (--config): no such file (ENOENT)`);
    expect(() => loadConfig("test", {})).toThrow(`cannot read config file test (--config; the start directory's: ${resolve("test")}): it is a directory (EISDIR)`);
    expect(() => loadConfig("config/development.yaml/x", {})).toThrow("/config/development.yaml/x): a directory on its path is a file (ENOTDIR)");
  });

  test("a relative config path that cannot be read names where it was looked for: the start directory's, not the checkout's", () => {
    // Before: `cannot read config file config/development.yaml (the default; ...)`, started from /, say, named no directory.
    const at = resolve("no-such-dir/development.yaml");
    expect(() => loadConfig("no-such-dir/development.yaml", {})).toThrow(`cannot read config file no-such-dir/development.yaml (--config; the start directory's: ${at}): no such file (ENOENT)`);
  });

  test("a datastore matching neither form names the key inside the chosen one, or lists the forms", () => {
    const store = (yaml: string) => base(good, `persistence:\n  datastore:\n${yaml}`);
    fails(store("    pglite: { datadir: ./d }"), "config: persistence.datastore.pglite.dataDir: is required (string)");
    fails(store("    pglite: { dataDir: 42 }"), "config: persistence.datastore.pglite.dataDir: Invalid input: expected string, received number");
    fails(store("    postgres: { uri: postgres://h/db }"), "config: persistence.datastore.postgres.url: is required (string)");
    const forms = "persistence.datastore: must hold one of pglite: { dataDir: PATH } or postgres: { url: URL }";
    fails(store("    sqlite: { dataDir: ./d }"), forms);
    fails(store("    pglite: { dataDir: ./d }\n    postgres: { url: postgres://h/db }"), forms);
  });

  test("bindOnIP: dotted numbers must be an IPv4 address", () => {
    const bind = (ip: string) => base(good, `services:\n  frontend:\n    rpc: { bindOnIP: "${ip}" }`);
    fails(bind("999.1.1.1"), "config: services.frontend.rpc.bindOnIP: must be an IP address such as 127.0.0.1 or 0.0.0.0");
    fails(bind("10.0.0"), "services.frontend.rpc.bindOnIP: must be an IP address");
    fails(bind(""), "services.frontend.rpc.bindOnIP: must be an IP address; to listen on every interface, 0.0.0.0 (or ::)");
    // Were looked up as host names at the start: "cannot listen on [[::1]]:7233 ... the host name does not resolve".
    fails(bind("[::1]"), "services.frontend.rpc.bindOnIP: takes an IPv6 address without brackets, e.g. :: or ::1");
    fails(bind("127.0.0.1:7233"), "services.frontend.rpc.bindOnIP: takes the address alone; the port goes in services.frontend.rpc.port");
    fails(bind("localhost:7233"), "the port goes in services.frontend.rpc.port");
    for (const ok of ["0.0.0.0", "10.1.255.7", "::", "::1", "fe80::1", "localhost"]) expect(parseConfig(bind(ok)).services.frontend.rpc.bindOnIP).toBe(ok);
  });

  test("TERN_DATABASE_URL overrides the datastore; TERN_LOG_LEVEL the level", () => {
    const c = parseConfig(base(good), { TERN_DATABASE_URL: "postgres://u@h/db", TERN_LOG_LEVEL: "debug" });
    expect(c.persistence.datastore).toEqual({ postgres: { url: "postgres://u@h/db" } });
    expect(c.log.level).toBe("debug");
    expect(() => parseConfig(base(good), { TERN_LOG_LEVEL: "loud" })).toThrow("TERN_LOG_LEVEL");
  });

  test("TERN_DATABASE_URL over a postgres block replaces its url only: the file's pool size and timeouts stay", () => {
    const file = base(good, `persistence: { datastore: { postgres: { url: "postgres://u@file/db", maxConnections: 32, lockTimeoutMs: 0, statementTimeoutMs: 60000, connectWaitMs: 5000 } } }`);
    expect(parseConfig(file, { TERN_DATABASE_URL: "postgres://u@env/db" }).persistence.datastore).toEqual({
      postgres: { url: "postgres://u@env/db", maxConnections: 32, lockTimeoutMs: 0, statementTimeoutMs: 60000, connectWaitMs: 5000 },
    });
  });

  test("settings past what the server can use are refused at parse, before anything is opened", () => {
    // A blob limit past 1 GiB made a read limit Connect refuses: the start failed after migrating.
    fails(base(good, "limits: { blobSizeLimitError: 9007199254740991 }"), "limits.blobSizeLimitError: 9007199254740991 is above the most, 1073741824");
    expect(parseConfig(base(good, "limits: { blobSizeLimitError: 1073741824 }")).limits.blobSizeLimitError).toBe(2 ** 30);
    // A timer past 2^31 - 1 ms fires after 1 ms: the check ran back to back.
    const pg = (ms: number) => base(good, `persistence: { datastore: { postgres: { url: "postgres://u@h/db", analyzeIntervalMs: ${ms} } } }`);
    fails(pg(3_000_000_000), "persistence.datastore.postgres.analyzeIntervalMs: 3000000000 is above the most, 2147483647");
    expect(parseConfig(pg(2 ** 31 - 1)).persistence.datastore).toMatchObject({ postgres: { analyzeIntervalMs: 2 ** 31 - 1 } });
    // PostgreSQL takes a statement_timeout of at most 2^31 - 1 ms; none below 0.
    const statementTimeout = (ms: number) => base(good, `persistence: { datastore: { postgres: { url: "postgres://u@h/db", statementTimeoutMs: ${ms} } } }`);
    fails(statementTimeout(-1), "persistence.datastore.postgres.statementTimeoutMs: -1 is below the least, 0");
    fails(statementTimeout(2 ** 31), "persistence.datastore.postgres.statementTimeoutMs: 2147483648 is above the most, 2147483647");
    expect(parseConfig(statementTimeout(60_000)).persistence.datastore).toMatchObject({ postgres: { statementTimeoutMs: 60_000 } });
  });

  test("replication: the timings an operator tunes, each bounded, none set by default (the server's own)", () => {
    expect(parseConfig(base(good)).replication).toEqual({});
    const set = "replication: { retry: { attempts: 8 }, waitMs: 5000, silenceGraceMs: 2000, cleanupIntervalMs: 500, heldRetryMs: 300000, backfillIdleMs: 60000, dlqGaugeIntervalMs: 1000, pageSize: 1000, historyPageBytes: 1048576 }";
    expect(parseConfig(base(good, set)).replication).toEqual({
      retry: { attempts: 8 }, waitMs: 5000, silenceGraceMs: 2000, cleanupIntervalMs: 500, heldRetryMs: 300_000, backfillIdleMs: 60_000, dlqGaugeIntervalMs: 1000, pageSize: 1000, historyPageBytes: 1 << 20,
    });
    const one = (key: string, value: unknown) => base(good, `replication: { ${key}: ${value} }`);
    // A timer past 2^31 - 1 ms fires after 1 ms; one under 100 ms loops its work back to back.
    fails(one("cleanupIntervalMs", 2 ** 31), "config: replication.cleanupIntervalMs: 2147483648 is above the most, 2147483647");
    expect(parseConfig(one("heldRetryMs", 2 ** 31 - 1)).replication.heldRetryMs).toBe(2 ** 31 - 1);
    fails(one("heldRetryMs", 0), "config: replication.heldRetryMs: 0 is below the least, 100");
    // Was a code option only (server-replication.ts): "unknown key".
    fails(one("dlqGaugeIntervalMs", 50), "config: replication.dlqGaugeIntervalMs: 50 is below the least, 100");
    fails(one("dlqGaugeIntervalMs", 2 ** 31), "config: replication.dlqGaugeIntervalMs: 2147483648 is above the most, 2147483647");
    fails(one("backfillIdleMs", 1.5), "config: replication.backfillIdleMs: 1.5 is not a whole number");
    fails(one("cleanupIntervalMs", '"10s"'), "config: replication.cleanupIntervalMs: Invalid input: expected number, received string");
    // A source holds a wait 30 s at most and sends 1000 tasks a page at most.
    fails(one("waitMs", 60_000), "config: replication.waitMs: 60000 is above the most, 30000");
    fails(one("pageSize", 0), "config: replication.pageSize: 0 is below the least, 1");
    fails(one("pageSize", 5000), "config: replication.pageSize: 5000 is above the most, 1000");
    fails(one("historyPageBytes", 8 << 20), "config: replication.historyPageBytes: 8388608 is above the most, 4194304");
    fails(one("silenceGraceMs", -1), "config: replication.silenceGraceMs: -1 is below the least, 100");
    // A typo, and a test hook, are refused as any unknown key is.
    fails(one("cleanupIntervalMS", 500), /^config: replication.cleanupIntervalMS: unknown key; the keys here are retry, waitMs, silenceGraceMs, cleanupIntervalMs, disabledRemoteGraceMs, heldRetryMs, backfillIdleMs, dlqGaugeIntervalMs, pageSize, historyPageBytes$/);
    fails(one("dlqMergeRounds", 1), "config: replication.dlqMergeRounds: unknown key");
    // The retry budget of a failing task before the DLQ: attempts in all, then the backoff's first and longest wait.
    expect(parseConfig(one("retry", "{ attempts: 10, backoffMs: 0, maxBackoffMs: 30000 }")).replication.retry).toEqual({ attempts: 10, backoffMs: 0, maxBackoffMs: 30_000 });
    expect(parseConfig(one("retry", "{ attempts: 3 }")).replication.retry).toEqual({ attempts: 3 });
    fails(one("retry", "{ attempts: 0 }"), "config: replication.retry.attempts: 0 is below the least, 1");
    fails(one("retry", "{ maxBackoffMs: 2147483648 }"), "config: replication.retry.maxBackoffMs: 2147483648 is above the most, 2147483647");
    fails(one("retry", "{ attempt: 3 }"), "config: replication.retry.attempt: unknown key; the keys here are attempts, backoffMs, maxBackoffMs");
  });

  test("replication.retry: a first backoff above its maximum is refused, naming the default where one is left out", () => {
    // Before: taken, and a failing task waited 5 s once, then 0.1 s at each attempt after.
    const retry = (r: string) => base(good, `replication: { retry: ${r} }`);
    fails(retry("{ backoffMs: 5000, maxBackoffMs: 100 }"), /^config: replication.retry.backoffMs: 5000 is above the most, 100 \(replication.retry.maxBackoffMs\)$/);
    fails(retry("{ backoffMs: 5000 }"), /^config: replication.retry.backoffMs: 5000 is above the most, 2000 \(replication.retry.maxBackoffMs, by default\)$/);
    expect(parseConfig(retry("{ backoffMs: 100, maxBackoffMs: 100 }")).replication.retry).toEqual({ backoffMs: 100, maxBackoffMs: 100 });
    expect(parseConfig(retry("{ backoffMs: 0, maxBackoffMs: 0 }")).replication.retry).toEqual({ backoffMs: 0, maxBackoffMs: 0 });
    expect(parseConfig(retry("{ backoffMs: 2000 }")).replication.retry).toEqual({ backoffMs: 2000 });
  });

  test("replication.retry: a maxBackoffMs alone below the default first backoff caps that too", () => {
    // Before: refused, naming the default backoffMs the user never wrote.
    const given = parseConfig(base(good, "replication: { retry: { maxBackoffMs: 100 } }")).replication.retry;
    expect(given).toEqual({ maxBackoffMs: 100 });
    expect(retryPolicy(given)).toEqual({ attempts: 5, backoffMs: 100, maxBackoffMs: 100 });
    expect(retryPolicy({ maxBackoffMs: 0 })).toEqual({ attempts: 5, backoffMs: 0, maxBackoffMs: 0 });
    // Above the default first backoff, or with a first backoff given, each is as given.
    expect(retryPolicy({ maxBackoffMs: 500 })).toEqual({ ...DEFAULT_RETRY_POLICY, maxBackoffMs: 500 });
    expect(retryPolicy({ backoffMs: 50, maxBackoffMs: 100 })).toEqual({ attempts: 5, backoffMs: 50, maxBackoffMs: 100 });
    expect(retryPolicy(undefined)).toEqual(DEFAULT_RETRY_POLICY);
  });

  test("config path: --config wins over TERN_CONFIG, then the default", () => {
    expect(resolveConfigPath(["--config", "a.yaml"], { TERN_CONFIG: "b.yaml" })).toBe("a.yaml");
    expect(resolveConfigPath(["--config=c.yaml"], {})).toBe("c.yaml");
    expect(resolveConfigPath([], { TERN_CONFIG: "b.yaml" })).toBe("b.yaml");
    expect(resolveConfigPath([], {})).toBe("config/development.yaml");
    expect(() => resolveConfigPath(["--config"], {})).toThrow("--config needs a path");
  });

  test("the server refuses an argument it does not know (a misspelt --config would start the default cluster)", () => {
    expect(() => resolveConfigPath(["--confg", "b.yaml"], {})).toThrow('unknown argument "--confg": the server takes only --config PATH (or TERN_CONFIG) and --wait-for-database DURATION (or TERN_DATABASE_WAIT)');
    expect(() => resolveConfigPath(["b.yaml"], { TERN_CONFIG: "a.yaml" })).toThrow('unknown argument "b.yaml"');
    expect(() => resolveConfigPath(["--config", "a.yaml", "--port", "1"], {})).toThrow('unknown argument "--port"');
    expect(() => resolveConfigPath(["--config=a.yaml", "extra"], {})).toThrow('unknown argument "extra"');
    // Was: the last one, silently.
    expect(() => resolveConfigPath(["--config", "a.yaml", "--config=b.yaml"], {})).toThrow('--config given twice ("a.yaml" and "b.yaml"): give it once');
    expect(() => parseServerArgs(["--wait-for-database", "1m", "--wait-for-database", "2m"], {})).toThrow("--wait-for-database given twice");
  });

  test("--wait-for-database DURATION, TERN_DATABASE_WAIT and connectWaitMs: how long a start waits for PostgreSQL", () => {
    expect(parseServerArgs(["--wait-for-database", "2m", "--config", "a.yaml"], {})).toEqual({ configPath: "a.yaml", databaseWaitMs: 120_000 });
    expect(parseServerArgs(["--wait-for-database=1.5s"], {})).toEqual({ configPath: "config/development.yaml", databaseWaitMs: 1500 });
    expect(parseServerArgs([], {})).toEqual({ configPath: "config/development.yaml" });
    expect(() => parseServerArgs(["--wait-for-database"], {})).toThrow("--wait-for-database needs a duration (e.g. 30s, 2m)");
    expect(() => parseServerArgs(["--wait-for-database", "soon"], {})).toThrow('--wait-for-database: invalid duration "soon" (use e.g. 30s, 2m, 500ms; 0 for none)');
    expect(() => parseServerArgs(["--wait-for-database", "30d"], {})).toThrow("--wait-for-database: 30d is longer than the longest wait, 2147483647 ms (about 24 days)");
    const pg = base(good, `persistence: { datastore: { postgres: { url: "postgres://u@h/db", connectWaitMs: 5000 } } }`);
    expect(parseConfig(pg).persistence.datastore).toMatchObject({ postgres: { connectWaitMs: 5000 } });
    expect(parseConfig(pg, { TERN_DATABASE_WAIT: "45s" }).persistence.datastore).toMatchObject({ postgres: { connectWaitMs: 45_000 } });
    // TERN_DATABASE_URL replaces the datastore; the wait applies to it.
    expect(parseConfig(base(good), { TERN_DATABASE_URL: "postgres://u@h/db", TERN_DATABASE_WAIT: "0" }).persistence.datastore).toEqual({ postgres: { url: "postgres://u@h/db", connectWaitMs: 0 } });
    expect(() => parseConfig(base(good), { TERN_DATABASE_WAIT: "10s" })).toThrow("TERN_DATABASE_WAIT: the datastore is PGlite (persistence.datastore.pglite), which has no database server to wait for");
    fails(base(good, `persistence: { datastore: { postgres: { url: "postgres://u@h/db", connectWaitMs: -1 } } }`), "persistence.datastore.postgres.connectWaitMs");
  });

  test("services.frontend.shutdownDrainDuration: a duration with its unit, 0 by default", () => {
    const drain = (value: string) => parseConfig(base(good, `services: { frontend: { shutdownDrainDuration: ${value} } }`)).services.frontend.shutdownDrainDuration;
    expect(parseConfig(base(good)).services.frontend.shutdownDrainDuration).toBe(0);
    expect(parseConfig(base(good, "services: { frontend: { rpc: { port: 7300 } } }")).services.frontend).toEqual({ rpc: { bindOnIP: "127.0.0.1", port: 7300 }, shutdownDrainDuration: 0 });
    expect([drain("10s"), drain('"1m30s"'), drain("500ms"), drain("0"), drain("0s")]).toEqual([10_000, 90_000, 500, 0, 0]);
    fails(base(good, "services: { frontend: { shutdownDrainDuration: 10 } }"), "services.frontend.shutdownDrainDuration: needs a unit: e.g. 10s or 10ms (0 for no drain)");
    fails(base(good, "services: { frontend: { shutdownDrainDuration: soon } }"), 'services.frontend.shutdownDrainDuration: invalid duration "soon" (use e.g. 10s, 500ms, 1m; 0 for no drain)');
    fails(base(good, "services: { frontend: { shutdownDrainDuration: 30d } }"), "services.frontend.shutdownDrainDuration: 30d is longer than the longest wait");
  });
});
