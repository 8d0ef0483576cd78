import type { Server } from "node:http";

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
