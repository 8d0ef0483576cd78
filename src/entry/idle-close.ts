import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Socket } from "node:net";

/**
 * Closes server's HTTP/1.1 connections once idle, for a stop: those idle now at once, and those
 * whose answer ends later (a stream the stop ended, a call in flight) once it is written, as
 * Bun.serve's stop does. Node's closeIdleConnections alone closed only the first: a connection
 * kept alive from an answer that ended after it waited out the keep-alive timeout or the grace.
 */
export function closeWhenIdle(server: Server): void {
  // Read as each answer ends: the connection is then closed after 1 ms without a request.
  server.keepAliveTimeout = 1;
  server.closeIdleConnections();
}

/**
 * closeWhenIdle that also closes, at once, every connection with no request being answered: one
 * kept alive from an answer before the stop on a server handed its connections (emit("connection"),
 * shared-port.ts), which Node does not track (it tracks them only once it listens), held Node's
 * stop until its keep-alive timeout (5 s after that answer) or the grace; one that sent part of a
 * request, which closeIdleConnections leaves, held it for the grace (node.ts).
 */
export function idleCloser(server: Server): () => void {
  const connections = new Set<Socket>();
  // Requests of a connection being answered (more than one when the client pipelines them).
  const answering = new Map<Socket, number>();
  server.on("connection", (socket: Socket) => {
    connections.add(socket);
    socket.once("close", () => {
      connections.delete(socket);
      answering.delete(socket);
    });
  });
  server.on("request", (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    answering.set(socket, (answering.get(socket) ?? 0) + 1);
    res.once("close", () => {
      const left = (answering.get(socket) ?? 1) - 1;
      if (left > 0) answering.set(socket, left);
      else answering.delete(socket);
    });
  });
  return () => {
    closeWhenIdle(server);
    for (const socket of connections) if (!answering.has(socket)) socket.destroy();
  };
}
