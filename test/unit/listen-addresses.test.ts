import { describe, expect, test } from "bun:test";
import { createServer } from "node:net";
import { parseConfig } from "../../src/config/load";
import { bindListener, describeBindError, ListenError, listenAddressesOf, type ListenAddress } from "../../src/entry/listen-addresses";

const configWithRpc = (rpc: string) =>
  parseConfig(`
clusterMetadata:
  enableGlobalNamespace: false
  failoverVersionIncrement: 10
  masterClusterName: active
  currentClusterName: active
  clusterInformation:
    active: { enabled: true, initialFailoverVersion: 0, rpcAddress: "" }
services: { frontend: { rpc: ${rpc} } }`);

const errno = (code: string, message = code) => Object.assign(new Error(message), { code });

describe("listenAddressesOf: the addresses boot binds and the setting behind each port", () => {
  const cases: [string, string, number | undefined, string | undefined][] = [
    ["grpcPort unset: port + 1", "{ bindOnIP: 0.0.0.0, port: 7233 }", 7234, "services.frontend.rpc.grpcPort, unset so port + 1"],
    ["grpcPort set", "{ bindOnIP: 0.0.0.0, port: 7233, grpcPort: 9000 }", 9000, "services.frontend.rpc.grpcPort"],
    ["grpcPort equal to port: one shared listener", "{ bindOnIP: 0.0.0.0, port: 7233, grpcPort: 7233 }", undefined, undefined],
    ["port 0, grpcPort unset: both ephemeral", "{ bindOnIP: 0.0.0.0, port: 0 }", 0, "services.frontend.rpc.grpcPort, unset so port + 1"],
    ["port 0 and grpcPort 0: one shared ephemeral port", "{ bindOnIP: 0.0.0.0, port: 0, grpcPort: 0 }", undefined, undefined],
  ];
  for (const [name, rpc, grpcPort, grpcSetting] of cases) {
    test(name, () => {
      const { http, grpc } = listenAddressesOf(configWithRpc(rpc));
      expect(http).toMatchObject({ host: "0.0.0.0", portSetting: "services.frontend.rpc.port" });
      expect(grpc?.port).toBe(grpcPort);
      expect(grpc?.portSetting).toBe(grpcSetting);
    });
  }
});

describe("describeBindError: the address, the setting to change, and why", () => {
  const at: ListenAddress = { host: "10.0.0.9", port: 80, portSetting: "services.frontend.rpc.port" };
  const cases: [string, Error, string][] = [
    ["in use: the port's setting", errno("EADDRINUSE"), "cannot listen on 10.0.0.9:80 (services.frontend.rpc.port): the port is in use by another process (EADDRINUSE)"],
    ["not this machine's: bindOnIP", errno("EADDRNOTAVAIL"), "cannot listen on 10.0.0.9:80 (services.frontend.rpc.bindOnIP): the address is not this machine's (EADDRNOTAVAIL)"],
    ["Deno's EINVAL for an address not this machine's: bindOnIP", errno("EINVAL"), "cannot listen on 10.0.0.9:80 (services.frontend.rpc.bindOnIP): the address is not this machine's (EINVAL)"],
    ["a privileged port", errno("EACCES"), "cannot listen on 10.0.0.9:80 (services.frontend.rpc.port): permission denied, ports below 1024 need privileges (EACCES)"],
    ["anything else: both settings and the runtime's words", errno("EMFILE", "too many open files"), "cannot listen on 10.0.0.9:80 (services.frontend.rpc.bindOnIP, services.frontend.rpc.port): too many open files (EMFILE)"],
  ];
  for (const [name, e, message] of cases) test(name, () => expect(describeBindError(at, e)).toBe(message));

  test("an IPv6 address in brackets", () => {
    expect(describeBindError({ ...at, host: "::1" }, errno("EADDRINUSE"))).toStartWith("cannot listen on [::1]:80 ");
  });
});

// The port can be taken between boot's check and its real bind: that bind fails as clearly.
test("TakenAfterTheCheck: Bun.serve on a held port fails with a ListenError naming the address and setting", async () => {
  const held = createServer();
  await new Promise<void>((resolve) => held.listen(0, "127.0.0.1", () => resolve()));
  const port = (held.address() as { port: number }).port;
  try {
    const at: ListenAddress = { host: "127.0.0.1", port, portSetting: "services.frontend.rpc.port" };
    const bound = bindListener(at, async () => Bun.serve({ hostname: at.host, port, fetch: () => new Response() }));
    await expect(bound).rejects.toThrow(ListenError);
    await expect(bound).rejects.toThrow(`cannot listen on 127.0.0.1:${port} (services.frontend.rpc.port): the port is in use by another process (EADDRINUSE)`);
  } finally {
    await new Promise((resolve) => held.close(resolve));
  }
});
