import { expect, setDefaultTimeout, test } from "bun:test";
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
          ? { level: "info", msg: "opening the database", database: "pglite", dataDir: at }
          : { level: "info", msg: "opening the database", database: "postgres", url: at.replace(/:[^:@/]*@/, ":***@") },
      );
    } finally {
      await cluster.destroy();
    }
  });
}
