/**
 * A remote's address with a host beyond ASCII (`héllo.example:7233`) is a legal IDNA name, looked
 * up as its punycode: taken, and where it does not resolve the refusal names the name looked up.
 */
import { describe, expect, test } from "bun:test";
import type { CurrentCluster } from "../../src/cluster/bootstrap";
import { createRemoteClientPool, frontendAddressProblem, lookedUpHost } from "../../src/cluster/remote-client";
import { createRemoteClusters } from "../../src/cluster/remote-clusters";
import type { TernError } from "../../src/errors";
import type { Db } from "../../src/persistence/database";

describe("an address whose host is not ASCII", () => {
  test("TestAnIdnaHostIsTakenAndItsLookedUpNameIsShownWhenItDoesNotResolve", async () => {
    // The upsert fails at its describe of the remote, before it reads the database.
    const remotes = createRemoteClusters({ db: {} as Db, current: { clusterName: "clusterA" } as CurrentCluster, clients: createRemoteClientPool(), onChanged: () => {} });
    const e = await remotes.upsert("héllo.invalid:7233").then(() => undefined, (x: TernError) => x);
    // Before: "... at http://héllo.invalid:7233: host not found", the name DNS was asked for not shown.
    expect([e?.kind, e?.message]).toEqual(["unavailable", "cannot reach a tern cluster at http://héllo.invalid:7233 (its host looked up as xn--hllo-bpa.invalid): host not found"]);
  });

  test("a long host looked up as another is shown cut, as the address is", async () => {
    const remotes = createRemoteClusters({ db: {} as Db, current: { clusterName: "clusterA" } as CurrentCluster, clients: createRemoteClientPool(), onChanged: () => {} });
    // Fullwidth letters, looked up as ASCII ones: 408 characters of host.
    const e = await remotes.upsert(`${"ｘ".repeat(400)}.invalid:7233`).then(() => undefined, (x: TernError) => x);
    expect(e?.message).toContain(`(its host looked up as "${"x".repeat(300)}…" (408 characters)): `);
    expect(e!.message.length).toBeLessThan(1000);
  });

  test("the host looked up, where it is not the one written", () => {
    expect(frontendAddressProblem("héllo.example:7233")).toBeUndefined();
    expect(lookedUpHost("http://héllo.example:7233")).toBe("xn--hllo-bpa.example");
    expect(lookedUpHost("http://ｐｅｅｒ.example:7233")).toBe("peer.example");
    expect(lookedUpHost("http://0x7f.1:7233")).toBe("127.0.0.1");
    for (const same of ["http://Peer.Example:7233", "http://[::1]:7233", "http://127.0.0.1:7233", "https://xn--hllo-bpa.example/x"]) expect(lookedUpHost(same)).toBeUndefined();
  });
});
