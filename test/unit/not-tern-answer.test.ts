/**
 * An address that answers HTTP, but not as a tern frontend (a proxy's 404 or 502 page, a web
 * server's 200 page), was reached: an upsert naming it says what answered, as it does for a
 * proxy's 500, and a forwarded call keeps the code connect reads from the status.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import type { CurrentCluster } from "../../src/cluster/bootstrap";
import { createRemoteClientPool } from "../../src/cluster/remote-client";
import { createRemoteClusters } from "../../src/cluster/remote-clusters";
import type { TernError } from "../../src/errors";
import type { Db } from "../../src/persistence/database";

/** A stand-in for a remote's address, answering every request with status, an HTML page (or none) of body. */
const serving = (status: number, body?: string) =>
  Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response(body ?? null, { status, headers: body === undefined ? {} : { "content-type": "text/html" } }) });

describe("an address answering HTTP, but not as a tern frontend", () => {
  const page = (title: string) => `<html><body><h1>${title}</h1>${" padding".repeat(30)}</body></html>`;
  let notFound: ReturnType<typeof serving>, badGateway: ReturnType<typeof serving>, unavailable: ReturnType<typeof serving>;
  let webPage: ReturnType<typeof serving>, bare404: ReturnType<typeof serving>;
  beforeAll(() => {
    notFound = serving(404, page("404 Not Found"));
    badGateway = serving(502, page("502 Bad Gateway"));
    unavailable = serving(503, page("503 Service Unavailable"));
    webPage = serving(200, page("Welcome to nginx!"));
    bare404 = serving(404);
  });
  afterAll(() => {
    for (const s of [notFound, badGateway, unavailable, webPage, bare404]) s.stop(true);
  });

  /** What an upsert of the remote at address answers: it fails at its describe, before it reads the database. */
  async function upsertFailure(address: string): Promise<TernError | undefined> {
    const remotes = createRemoteClusters({ db: {} as Db, current: { clusterName: "clusterA" } as CurrentCluster, clients: createRemoteClientPool(), onChanged: () => {} });
    return remotes.upsert(address).then(() => undefined, (e: TernError) => e);
  }

  test("TestUpsertAtAnAddressAnsweringAProxysPageSaysItAnsweredButNotAsATernFrontend", async () => {
    const cut = (title: string) => JSON.stringify(`${page(title).slice(0, 120)}...`);
    // Before: "cannot reach a tern cluster at http://...: HTTP 404" (and "...: unsupported content type text/html" for the 200).
    for (const [server, status, title] of [[notFound, 404, "404 Not Found"], [badGateway, 502, "502 Bad Gateway"], [unavailable, 503, "503 Service Unavailable"], [webPage, 200, "Welcome to nginx!"]] as const) {
      const e = await upsertFailure(server.url.host);
      expect([e?.kind, e?.message]).toEqual(["unavailable", `http://${server.url.host} answered, but not as a tern frontend: HTTP ${status} ${cut(title)}`]);
    }
    const e = await upsertFailure(bare404.url.host);
    expect(e?.message).toBe(`http://${bare404.url.host} answered, but not as a tern frontend: HTTP 404 with no body`);
  });

  test("a call answered so keeps the code connect reads from the status, and its message", async () => {
    const failure = (address: string) => createRemoteClientPool().get(address).workflow.signalWorkflowExecution({ namespace: "orders" }).then(() => undefined, (e: unknown) => e as ConnectError);
    // A 404 stays UNIMPLEMENTED (a peer reads it as a tern that does not serve the call), a 502 or 503 UNAVAILABLE (retried).
    const answered = await Promise.all([notFound, bare404, badGateway, unavailable].map((s) => failure(s.url.host)));
    expect(answered.map((e) => [e instanceof ConnectError, e?.code, e?.rawMessage])).toEqual([
      [true, Code.Unimplemented, "HTTP 404"],
      [true, Code.Unimplemented, "HTTP 404"],
      [true, Code.Unavailable, "HTTP 502"],
      [true, Code.Unavailable, "HTTP 503"],
    ]);
    // A web page's 200 was connect's "unsupported content type text/html": UNKNOWN still, which forwarding answers as UNAVAILABLE.
    expect((await failure(webPage.url.host))?.code).toBe(Code.Unknown);
  });
});
