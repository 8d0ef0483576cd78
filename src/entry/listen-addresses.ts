/**
 * Where the server listens, each address with the config setting that chose it, and a
 * check that each can be bound, made before the database is opened: a start that cannot
 * bind must not migrate a database or save a cluster identity from a config about to be
 * corrected.
 */
import { lookup } from "node:dns/promises";
import { createServer, isIP } from "node:net";
import type { Config } from "../config/schema";
import { hostPort } from "../host-port";

const RPC = "services.frontend.rpc";

/** An address a listener binds, and the setting that chose its port. */
export interface ListenAddress {
  host: string;
  port: number;
  portSetting: string;
}

/** The HTTP/1.1 listener's address and the native gRPC one's; grpc undefined when they share a port. */
export interface ListenAddresses {
  http: ListenAddress;
  grpc?: ListenAddress;
}

/** A listener that could not bind, said with its address and the setting to change. */
export class ListenError extends Error {
  override name = "ListenError";
}

/**
 * Where native gRPC listens: "shared" when grpcPort equals port (0 and 0 included: one
 * ephemeral port for both), else grpcPort, else port + 1 (ephemeral when port is 0).
 */
function grpcPortOf(config: Config): number | "shared" {
  const rpc = config.services.frontend.rpc;
  if (rpc.grpcPort === rpc.port) return "shared";
  return rpc.grpcPort ?? (rpc.port === 0 ? 0 : rpc.port + 1);
}

/** The addresses boot binds, from services.frontend.rpc. */
export function listenAddressesOf(config: Config): ListenAddresses {
  const rpc = config.services.frontend.rpc;
  const http = { host: rpc.bindOnIP, port: rpc.port, portSetting: `${RPC}.port` };
  const grpcPort = grpcPortOf(config);
  if (grpcPort === "shared") return { http };
  const grpcSetting = rpc.grpcPort === undefined ? `${RPC}.grpcPort, unset so port + 1` : `${RPC}.grpcPort`;
  return { http, grpc: { host: rpc.bindOnIP, port: grpcPort, portSetting: grpcSetting } };
}

/**
 * Binds each address briefly and lets it go; throws a ListenError for the first that
 * cannot be bound. Port 0 too: an ephemeral port is always found, but bindOnIP may not be
 * this machine's or resolve (that bind failed after the database was made). Another process
 * can still take a port between this check and the real bind; that bind then fails as
 * cleanly (bindListener), only after the database is opened.
 */
export async function checkListenAddresses({ http, grpc }: ListenAddresses): Promise<void> {
  for (const address of grpc ? [http, grpc] : [http]) await bindListener(address, () => probe(address));
}

/** Runs listen (a listener's bind), turning its bind error into a ListenError naming address. */
export async function bindListener<T>(address: ListenAddress, listen: () => Promise<T>): Promise<T> {
  try {
    return await listen();
  } catch (e) {
    throw new ListenError(describeBindError(address, e as NodeJS.ErrnoException), { cause: e });
  }
}

/** Listens on the address with node:net and closes at once. */
async function probe({ host, port }: ListenAddress): Promise<void> {
  // Bun's listen says only "Failed to listen at HOST" of a name that does not resolve; the lookup says ENOTFOUND.
  if (isIP(host) === 0) await lookup(host);
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(port, host, () => server.close(() => resolve()));
  });
}

/** "cannot listen on HOST:PORT (SETTING): WHY (CODE)". */
export function describeBindError({ host, port, portSetting }: ListenAddress, e: NodeJS.ErrnoException): string {
  const at = `cannot listen on ${hostPort(host, port)}`;
  const code = e.code ? ` (${e.code})` : "";
  switch (e.code) {
    case "EADDRINUSE":
      return `${at} (${portSetting}): the port is in use by another process${code}`;
    case "EADDRNOTAVAIL":
    case "EINVAL": // Deno's node:net reports an address that is not the machine's so
      return `${at} (${RPC}.bindOnIP): the address is not this machine's${code}`;
    case "ENOTFOUND":
    case "EAI_AGAIN": // no name server answered
      return `${at} (${RPC}.bindOnIP): the host name does not resolve${code}`;
    case "ERR_SOCKET_BAD_PORT":
      return `${at} (${portSetting}): the port is out of range${code}`;
    case "EACCES":
      return `${at} (${portSetting}): permission denied${port < 1024 ? ", ports below 1024 need privileges" : ""}${code}`;
    default:
      return `${at} (${RPC}.bindOnIP, ${portSetting}): ${e.message}${code}`;
  }
}
