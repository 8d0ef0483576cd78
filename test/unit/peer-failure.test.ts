import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createServer, type Server } from "node:net";
import { createRemoteClientPool, peerFailureText, peerUnreachable } from "../../src/cluster/remote-client";
import { TernError } from "../../src/errors";

/** The error of a real call (Bun's fetch) to a peer at address. */
async function failureAt(address: string): Promise<unknown> {
  return createRemoteClientPool().get(address).operator.describeCluster({}).then(() => undefined, (e) => e);
}

/** A TCP server that answers every connection with `answer` (or nothing) and closes it. */
async function listenAnswering(answer: string | undefined): Promise<Server> {
  const server = createServer((socket) => (answer === undefined ? socket.destroy() : socket.end(answer)));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

const portOf = (s: Server) => (s.address() as { port: number }).port;

describe("a peer that gives no answer is named in plain words, without Bun's fetch advice", () => {
  let reset: Server, notHttp: Server;
  beforeAll(async () => {
    [reset, notHttp] = await Promise.all([listenAnswering(undefined), listenAnswering("SSH-2.0-OpenSSH\r\n")]);
  });
  afterAll(() => {
    reset.close();
    notHttp.close();
  });

  test("connection refused, reset, and an answer that is not HTTP/1.1", async () => {
    const refused = await failureAt("127.0.0.1:1");
    expect(peerFailureText(refused)).toBe("connection refused");
    const e = peerUnreachable(refused, "clusterB");
    expect(e).toBeInstanceOf(TernError);
    expect((e as TernError).message).toBe("cannot reach cluster clusterB: connection refused; retry");
    expect(peerFailureText(await failureAt(`127.0.0.1:${portOf(reset)}`))).toMatch(/^connection (reset|closed)$/);
    expect(peerFailureText(await failureAt(`127.0.0.1:${portOf(notHttp)}`))).toBe(
      "its answer is not HTTP/1.1 (a native gRPC port? tern's Connect port is services.frontend.rpc.port)",
    );
  });
});
