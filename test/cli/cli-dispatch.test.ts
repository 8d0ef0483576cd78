import { describe, expect, test } from "bun:test";
import type { AdminDbBackend } from "../../src/cli/admin-db-backend";
import { editDistance, suggestNames } from "../../src/cli/suggest";
import type { DatastoreConfig } from "../../src/config/schema";
import { VERSION } from "../../src/version";
import { runCli } from "./harness";

const cluster = { describeCluster: () => ({ cluster: { clusterName: "clusterA", historyShardCount: 4 } }) };

describe("dispatch and global flags", () => {
  test("global flags work before, between and after command words", async () => {
    const r = await runCli(["--address", "10.0.0.5:8233", "operator", "-o", "json", "cluster", "describe"], { operator: cluster });
    expect(r.code).toBe(0);
    expect(r.addresses).toEqual(["http://10.0.0.5:8233"]);
    expect(JSON.parse(r.stdout).cluster.clusterName).toBe("clusterA");
    const after = await runCli(["operator", "cluster", "describe", "--address=http://h:1", "--output=json"], { operator: cluster });
    expect(after.addresses).toEqual(["http://h:1"]);
  });

  test("-ojson (the value attached) before or after the command, and -o JSON in any case", async () => {
    for (const argv of [["-ojson", "operator", "cluster", "describe"], ["operator", "cluster", "describe", "-o", "JSON"], ["operator", "-oJson", "cluster", "describe"]]) {
      const r = await runCli(argv, { operator: cluster });
      expect({ argv, code: r.code, stderr: r.stderr }).toEqual({ argv, code: 0, stderr: "" });
      expect(JSON.parse(r.stdout).cluster.clusterName).toBe("clusterA");
    }
  });

  test("a command's flag takes a value that starts with -o as is, not as -o with its value attached (--reason -oops)", async () => {
    let message = "";
    const r = await runCli(["workflow", "fail", "-w", "w", "--reason", "-oops"], {
      workflow: { failWorkflowExecution: (req) => ((message = req.failure!.message), {}) },
    });
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
    expect(message).toBe("-oops");
  });

  test("-n -ojson, the namespace left out, is refused, not -ojson taken for the namespace; -n=-ojson names it", async () => {
    const names: string[] = [];
    const workflow = { describeNamespace: (req: { namespace: string }) => (names.push(req.namespace), {}) };
    const r = await runCli(["operator", "namespace", "describe", "-n", "-ojson"], { workflow });
    expect([r.code, r.stderr.split("\n")[0]]).toEqual([2, "error: -n needs a value (the next word, -ojson, is a flag; for a value that starts with -, write -n=VALUE)"]);
    const given = await runCli(["operator", "namespace", "describe", "-n=-ojson", "-ojson"], { workflow });
    expect([given.code, given.stderr, names]).toEqual([0, "", ["-ojson"]]);
  });

  test("default address is 127.0.0.1:7233", async () => {
    const r = await runCli(["operator", "cluster", "describe"], { operator: cluster });
    expect(r.addresses).toEqual(["http://127.0.0.1:7233"]);
    expect(r.stdout).toMatch(/^HistoryShardCount: +4$/m);
  });

  test("--help at each level lists subcommands or flags and exits 0", async () => {
    const root = await runCli(["--help"]);
    expect(root.code).toBe(0);
    expect(root.stdout).toContain("workflow");
    expect(root.stdout).toContain("operator");
    const group = await runCli(["operator", "namespace", "-h"]);
    expect(group.stdout).toMatch(/^ {2}delete +Delete a namespace/m);
    const leaf = await runCli(["workflow", "show", "--help", "-w"]);
    expect(leaf.code).toBe(0);
    expect(leaf.stdout).toContain("--follow");
    expect(leaf.stdout).toContain('{ "events": [HistoryEvent, ...] }');
  });

  test("tern help [COMMAND...] prints what tern [COMMAND...] --help does, as git help and kubectl help do", async () => {
    for (const words of [[], ["operator", "namespace"], ["workflow", "show"]]) {
      const viaFlag = await runCli([...words, "--help"]);
      const viaHelp = await runCli(["help", ...words]);
      expect({ words, code: viaHelp.code, stdout: viaHelp.stdout, stderr: viaHelp.stderr }).toEqual({ words, code: 0, stdout: viaFlag.stdout, stderr: "" });
    }
    expect((await runCli(["help"])).stdout).toContain("(or 'tern help <command>')");
    const unknown = await runCli(["help", "launch"]);
    expect([unknown.code, unknown.stderr]).toEqual([2, `error: unknown command "launch" for "tern"\n(run 'tern --help' for usage)\n`]);
  });

  test("usage errors exit 2 with a hint to --help", async () => {
    const unknown = await runCli(["workflow", "launch"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toBe(`error: unknown command "launch" for "tern workflow"\n(run 'tern workflow --help' for usage)\n`);
    const flag = await runCli(["workflow", "describe", "-w", "x", "--bogus"]);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain("unknown flag --bogus");
    const output = await runCli(["workflow", "list", "-o", "yaml"]);
    expect(output.code).toBe(2);
    const extra = await runCli(["workflow", "list", "stray"]);
    expect(extra.stderr).toContain('unexpected argument "stray"');
  });

  test("a mistyped command suggests the nearest command names (edit distance, or a name it begins), as git and the temporal CLI do", async () => {
    // Was: `error: unknown command "strat" for "tern workflow"` and the hint, no suggestion.
    const swapped = await runCli(["workflow", "strat", "-w", "w1"]);
    expect([swapped.code, swapped.stdout]).toEqual([2, ""]);
    expect(swapped.stderr).toBe(`error: unknown command "strat" for "tern workflow"\n\nDid you mean this?\n\tstart\n\n(run 'tern workflow --help' for usage)\n`);
    const top = await runCli(["wokflow", "list"]);
    expect(top.stderr).toBe(`error: unknown command "wokflow" for "tern"\n\nDid you mean this?\n\tworkflow\n\n(run 'tern --help' for usage)\n`);
    // A word a name begins with, and `help`, which the top takes though it is no command of the tree.
    expect((await runCli(["operator", "namespace", "desc"])).stderr).toContain("\nDid you mean this?\n\tdescribe\n");
    expect((await runCli(["hlep"])).stderr).toContain("\nDid you mean this?\n\thelp\n");
    // Several, in the group's order.
    expect((await runCli(["workflow", "sig"])).stderr).toContain("\nDid you mean one of these?\n\tsignal-with-start\n\tsignal\n\n");
    // Nothing near: the error and the hint alone.
    expect((await runCli(["workflow", "launch"])).stderr).toBe(`error: unknown command "launch" for "tern workflow"\n(run 'tern workflow --help' for usage)\n`);
  });

  test("editDistance counts a swap of neighbours as one; suggestNames keeps those within 2, in any case", () => {
    expect([editDistance("strat", "start"), editDistance("", "abc"), editDistance("kitten", "sitting"), editDistance("list", "list")]).toEqual([1, 3, 3, 0]);
    expect(suggestNames("STRAT", ["signal", "start", "show"])).toEqual(["start"]);
    expect(suggestNames("lst", ["list", "last", "describe"])).toEqual(["list", "last"]);
    expect(suggestNames("zzz", ["list", "show"])).toEqual([]);
  });

  test("a misspelt global flag before the command is named, not its value taken for a command", async () => {
    // The runbook's tctl spelling is `tern -address HOST admin cluster ...`.
    const r = await runCli(["-adress", "127.0.0.1:8233", "admin", "cluster", "list"], { operator: cluster });
    expect(r.code).toBe(2);
    expect(r.addresses).toEqual([]);
    expect(r.stderr).toBe(
      "error: unknown flag -adress before the command (the flags taken there are --address, --rpc-timeout, --output, --help; a command's own flags go after it)\n" +
        "(run 'tern --help' for usage)\n",
    );
  });

  test("a global flag's value left out is named, not the command or flag after it taken for the value", async () => {
    const command = await runCli(["--address", "operator", "cluster", "describe"], { operator: cluster });
    expect([command.code, command.addresses]).toEqual([2, []]);
    expect(command.stderr).toBe(`error: --address needs a value (it took the command "operator" for one)\n(run 'tern --help' for usage)\n`);
    const flag = await runCli(["--address", "-o", "json", "operator", "cluster", "describe"], { operator: cluster });
    expect([flag.code, flag.addresses]).toEqual([2, []]);
    expect(flag.stderr).toStartWith("error: --address needs a value (the next word, -o, is a flag; for a value that starts with -, write --address=VALUE)\n");
  });

  test("tern --version prints the CLI's version, which the root help names (it was 'unknown flag --version (choose a subcommand first)')", async () => {
    const r = await runCli(["--version"]);
    expect([r.code, r.stdout, r.stderr]).toEqual([0, `tern ${VERSION}\n`, ""]);
    expect((await runCli(["--help"])).stdout).toContain("'tern --version' prints this CLI's version.");
  });

  test("a bare group prints its help", async () => {
    const r = await runCli(["workflow"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("signal-with-start");
  });
});

describe("admin db", () => {
  function fakeBackend(log: string[], unknownApplied = 0): AdminDbBackend {
    return {
      readEnv: () => ({ TERN_CONFIG: "env.yaml" }),
      resolveConfigPath: (argv, env) => (argv[0] === "--config" ? argv[1]! : env.TERN_CONFIG!),
      loadConfig: (path) => {
        log.push(`load ${path}`);
        return { persistence: { datastore: { pglite: { dataDir: "/d" } } } } as never;
      },
      openDatabase: async (store: DatastoreConfig) => {
        log.push(`open ${JSON.stringify(store)}`);
        return { close: async () => void log.push("close") } as never;
      },
      migrateSchema: async () => ["0001_more"],
      schemaStatus: async () => ({ known: ["0000_init", "0001_more"], applied: ["0000_init"], pending: ["0001_more"], unknownApplied }),
      redactUrl: (u) => u.replace(/:[^:@/]*@/, ":***@"),
      migrationsFolder: "/repo/drizzle",
    };
  }

  test("migrate with --config loads that file, migrates and closes", async () => {
    const log: string[] = [];
    const r = await runCli(["admin", "db", "migrate", "--config", "c.yaml"], { adminDb: fakeBackend(log) });
    expect(r.code).toBe(0);
    expect(log).toEqual(["load c.yaml", 'open {"pglite":{"dataDir":"/d"}}', "close"]);
    expect(r.stdout).toContain("Applied 0001_more");
  });

  test("--database-url skips the config file; status shows pending", async () => {
    const log: string[] = [];
    const r = await runCli(["admin", "db", "status", "--database-url", "postgres://u:pw@h/db"], { adminDb: fakeBackend(log) });
    expect(log[0]).toBe('open {"postgres":{"url":"postgres://u:pw@h/db"}}');
    expect(r.stdout).toContain("PostgreSQL postgres://u:***@h/db");
    expect(r.stdout).toMatch(/^0001_more +pending$/m);
    expect(r.stdout).not.toContain("pw");
  });

  for (const format of ["table", "json"]) {
    test(`status on a schema newer than this build (a downgrade) says so and exits 1 (${format})`, async () => {
      const r = await runCli(["admin", "db", "status", "--config", "c.yaml", "-o", format], { adminDb: fakeBackend([], 1) });
      expect(r.code).toBe(1);
      expect(r.stderr).toBe("error: the database schema is newer than this tern build: 1 migration applied to it is unknown to this build; upgrade tern\n");
      expect(r.stdout).not.toContain("up to date");
    });
  }

  test("--address and --rpc-timeout are refused, not ignored: admin db works on the database the config names, not on a server's", async () => {
    const log: string[] = [];
    const address = await runCli(["--address", "prod:7233", "admin", "db", "migrate"], { adminDb: fakeBackend(log) });
    expect([address.code, address.stderr]).toEqual([
      2,
      "error: --address does not apply to 'tern admin db migrate': it works on the database itself, not through a server; name the database with --config or --database-url\n" +
        "(run 'tern admin db migrate --help' for usage)\n",
    ]);
    const timeout = await runCli(["admin", "db", "status", "--config", "c.yaml", "--rpc-timeout", "5s"], { adminDb: fakeBackend(log) });
    expect([timeout.code, timeout.stderr.split("\n")[0]]).toEqual([2, "error: --rpc-timeout does not apply to 'tern admin db status': it works on the database itself, not through a server; name the database with --config or --database-url"]);
    expect(log).toEqual([]);
    const help = await runCli(["admin", "db", "migrate", "--help"]);
    expect(help.stdout).toContain("--database-url URL");
    for (const words of [["admin", "db", "migrate"], ["admin", "db"]]) {
      const text = (await runCli([...words, "--help"])).stdout;
      expect([text.includes("--address"), text.includes("--rpc-timeout"), text.includes("--output")]).toEqual([false, false, true]);
    }
    expect((await runCli(["admin", "--help"])).stdout).toContain("--address");
  });

  test("a non-postgres --database-url is a usage error", async () => {
    const r = await runCli(["admin", "db", "status", "--database-url", "mysql://x"], { adminDb: fakeBackend([]) });
    expect(r.code).toBe(2);
  });
});
