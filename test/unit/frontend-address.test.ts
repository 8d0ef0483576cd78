/**
 * A remote's address written without a port (`--frontend-address 127.0.0.1`) is refused, naming the
 * fix: it went to port 80 (http://127.0.0.1), and the upsert failed UNAVAILABLE "cannot reach",
 * which reads as a cluster down, where the CLI's own --address takes a bare host at 7233.
 */
import { describe, expect, test } from "bun:test";
import type { CurrentCluster } from "../../src/cluster/bootstrap";
import { createRemoteClientPool, frontendAddressProblem } from "../../src/cluster/remote-client";
import { createRemoteClusters } from "../../src/cluster/remote-clusters";
import type { TernError } from "../../src/errors";
import type { Db } from "../../src/persistence/database";

describe("a frontend address without a port", () => {
  test("TestAnUpsertOfAHostWithoutAPortIsRefusedNamingHostPort", async () => {
    // Refused before the upsert reads the database or asks the remote.
    const remotes = createRemoteClusters({ db: {} as Db, current: { clusterName: "clusterA" } as CurrentCluster, clients: createRemoteClientPool(), onChanged: () => {} });
    const e = await remotes.upsert("127.0.0.1").then(() => undefined, (x: TernError) => x);
    expect([e?.kind, e?.message]).toEqual([
      "invalid_argument",
      'frontend address "127.0.0.1" names no port: give host:port (127.0.0.1:7233 for tern\'s default), or an http(s) URL, which is taken at its scheme\'s port',
    ]);
  });

  test("host:port, any port, and URLs without one are taken", () => {
    for (const bare of ["localhost", "peer.example", "[::1]", "héllo.example"]) expect(frontendAddressProblem(bare)).toContain("names no port");
    for (const ok of ["localhost:8233", "127.0.0.1:80", "[::1]:7233", "héllo.example:7233", "http://gw.example", "https://gw.example/tern", "http://127.0.0.1:8233"]) {
      expect(frontendAddressProblem(ok)).toBeUndefined();
    }
  });
});
