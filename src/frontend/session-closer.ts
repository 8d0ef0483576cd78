import type { Http2Server, ServerHttp2Session } from "node:http2";
import type { Duplex } from "node:stream";

/** What a stop does to an HTTP/2 server's connections (sessionCloser). */
export interface SessionCloser {
  /** GOAWAY to the sessions with streams open (they close once those end); the other connections closed at once. */
  closeIdle(): void;
  /** Every connection cut, for the end of the grace. */
  closeAll(): void;
}

/**
 * Tracks server's connections and their sessions' open streams, for a stop. A session's close()
 * waits for the client's preface, and on Bun so does its destroy(): a connection that sent
 * nothing, or part of the preface, held server.close() past the grace (on Node, and on Bun,
 * for good: the stop reached its limit and exited 1). Its socket is closed instead.
 */
export function sessionCloser(server: Http2Server): SessionCloser {
  const connections = new Map<Duplex, ServerHttp2Session | undefined>();
  const openStreams = new Map<ServerHttp2Session, number>();
  // Node and Bun make a connection's session, and emit it, before the "connection" listeners added here run.
  let made: ServerHttp2Session | undefined;
  server.on("session", (session: ServerHttp2Session) => {
    made = session;
    openStreams.set(session, 0);
    session.once("close", () => openStreams.delete(session));
    session.on("stream", (stream) => {
      openStreams.set(session, (openStreams.get(session) ?? 0) + 1);
      stream.once("close", () => openStreams.has(session) && openStreams.set(session, openStreams.get(session)! - 1));
    });
  });
  server.on("connection", (connection: Duplex) => {
    connections.set(connection, made);
    made = undefined;
    connection.once("close", () => connections.delete(connection));
  });
  const cut = (connection: Duplex, session: ServerHttp2Session | undefined) => {
    session?.destroy();
    connection.destroy();
  };
  return {
    closeIdle() {
      for (const [connection, session] of connections) {
        if (session && (openStreams.get(session) ?? 0) > 0) session.close();
        else cut(connection, session);
      }
    },
    closeAll() {
      for (const [connection, session] of connections) cut(connection, session);
    },
  };
}
