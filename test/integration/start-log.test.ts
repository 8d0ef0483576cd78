import { expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { createLogger } from "../../src/observability/log";
import { startTestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

for (const store of await testStores()) {
  test(`a start says which database it opens before it opens it (${store}): a first PGlite start was seconds of silence`, async () => {
    const lines: Record<string, unknown>[] = [];
    const log = createLogger({ write: (line) => void lines.push(JSON.parse(line)) });
    const cluster = await startTestCluster({ store, serverOptions: { log } });
    try {
      const msgs = lines.map((l) => l.msg);
      expect(msgs.indexOf("opening the database")).toBe(0);
      const { time: _, ...opening } = lines[0]!;
      const at = cluster.dataLocation;
      expect(opening).toEqual(
        store === "pglite"
          ? { level: "info", msg: "opening the database", database: "pglite", dataDir: at, path: at }
          : { level: "info", msg: "opening the database", database: "postgres", url: at.replace(/:[^:@/]*@/, ":***@") },
      );
    } finally {
      await cluster.destroy();
    }
  });
}

test("a start on a relative PGlite dataDir logs the absolute path it opened: it is the start directory's, not the config file's", async () => {
  // Before: only the dataDir as written, `./data`, which says nothing of where the server was started.
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ write: (line) => void lines.push(JSON.parse(line)) });
  const parent = mkdtempSync(join(tmpdir(), "tern-start-log-"));
  const absolute = join(parent, "db");
  const dataDir = relative(process.cwd(), absolute);
  const cluster = await startTestCluster({ store: "pglite", dataLocation: dataDir, serverOptions: { log } });
  try {
    const { time: _, ...opening } = lines[0]!;
    expect(opening).toEqual({ level: "info", msg: "opening the database", database: "pglite", dataDir, path: absolute });
  } finally {
    await cluster.destroy();
    rmSync(parent, { recursive: true, force: true });
  }
});
