/**
 * HTTP/1.1 and cleartext HTTP/2 (native gRPC) on one port: a raw TCP listener reads
 * the first bytes of each connection and hands the socket to an http2 server when
 * they are the HTTP/2 client preface ("PRI * HTTP/2.0"), else to an HTTP/1 server.
 */
import { getRequestListener } from "@hono/node-server";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { unservedFallback } from "../frontend/grpc-server";
import { sessionCloser } from "../frontend/session-closer";
import { createServer as createHttp1Server } from "node:http";
import { createServer as createHttp2Server } from "node:http2";
import { createServer as createTcpServer, type Socket } from "node:net";
import { Duplex } from "node:stream";
import type { TernServer } from "../server";
import type { Listener } from "./boot";
import { idleCloser } from "./idle-close";

/** "PRI" never starts an HTTP/1 request line, so three bytes decide. */
const PREFACE_HEAD = Buffer.from("PRI");
/** A connection that sends nothing for this long is dropped before it is routed. */
const FIRST_BYTES_TIMEOUT_MS = 30_000;

/** Listens on host:port for HTTP/1.1 (tern.fetch) and h2c (the connect routes). */
export async function listenSharedPort(
  tern: Pick<TernServer, "fetch" | "routes" | "interceptors" | "refuseUnserved">,
  { host, port, readMaxBytes }: { host: string; port: number; readMaxBytes: number },
): Promise<Listener> {
  // overrideGlobalObjects would swap the global Response for node-server's own, which
  // breaks Bun.serve (or any other fetch server) in the same process.
  const http1 = createHttp1Server(getRequestListener((req) => tern.fetch(req), { overrideGlobalObjects: false }));
  http1.requestTimeout = 0; // long polls
  const closeIdleHttp1 = idleCloser(http1);
  const http2 = createHttp2Server(connectNodeAdapter({ routes: tern.routes, interceptors: tern.interceptors, readMaxBytes, fallback: unservedFallback(tern.refuseUnserved) }));
  const http2Connections = sessionCloser(http2);
  const sockets = new Set<Socket>();
  // Connections that have not sent enough to be told apart yet: no server holds them.
  const unrouted = new Set<Socket>();
  const tcp = createTcpServer((socket) => {
    sockets.add(socket);
    unrouted.add(socket);
    socket.once("close", () => {
      sockets.delete(socket);
      unrouted.delete(socket);
    });
    route(socket, (isHttp2, head) => {
      unrouted.delete(socket);
      if (isHttp2) http2.emit("connection", withHead(socket, head));
      else {
        socket.unshift(head);
        http1.emit("connection", socket);
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    tcp.once("error", reject);
    tcp.listen(port, host, () => {
      tcp.off("error", reject);
      resolve();
    });
  });
  const address = tcp.address();
  return {
    port: typeof address === "object" && address ? address.port : port,
    async close(graceMs) {
      const closed = new Promise<void>((resolve) => tcp.close(() => resolve()));
      http2Connections.closeIdle();
      closeIdleHttp1();
      // Before 2026-12-07 a connection that had sent nothing, or "P", held the stop for the grace.
      for (const s of unrouted) s.destroy();
      const timer = setTimeout(() => sockets.forEach((s) => s.destroy()), graceMs);
      await closed;
      clearTimeout(timer);
    },
  };
}

/** Buffers the first bytes, puts them back, and tells which protocol the client speaks. */
function route(socket: Socket, handTo: (isHttp2: boolean, head: Buffer) => void): void {
  let head = Buffer.alloc(0);
  const silent = () => socket.destroy();
  socket.setTimeout(FIRST_BYTES_TIMEOUT_MS, silent);
  const onData = (chunk: Buffer) => {
    head = Buffer.concat([head, chunk]);
    const n = Math.min(head.length, PREFACE_HEAD.length);
    const isHttp2 = head.subarray(0, n).equals(PREFACE_HEAD.subarray(0, n));
    if (isHttp2 && head.length < PREFACE_HEAD.length) return; // wait for the rest of "PRI"
    socket.off("data", onData);
    socket.setTimeout(0);
    socket.off("timeout", silent); // the protocol server sets its own timeouts
    socket.pause();
    handTo(isHttp2, head);
    socket.resume();
  };
  socket.on("data", onData);
  socket.once("error", () => socket.destroy());
}

/**
 * The socket as a plain Duplex that first yields head. Node's http2 reads a net.Socket's
 * native handle directly, skipping bytes put back with unshift(), so the preface would
 * be lost; a non-socket Duplex makes it read through JS.
 */
function withHead(socket: Socket, head: Buffer): Duplex {
  const duplex = new Duplex({
    read: () => void socket.resume(),
    write: (chunk, encoding, done) => void socket.write(chunk, encoding, done),
    final: (done) => void socket.end(done),
    destroy: (err, done) => {
      socket.destroy(err ?? undefined);
      done(err);
    },
  });
  duplex.push(head);
  socket.on("data", (chunk: Buffer) => {
    if (!duplex.push(chunk)) socket.pause();
  });
  socket.once("end", () => duplex.push(null));
  socket.once("close", () => duplex.destroy());
  return duplex;
}
