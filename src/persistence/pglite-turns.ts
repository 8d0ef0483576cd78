import { nextTurn } from "../next-turn";

/** The methods of a PGlite client that answer statements (drizzle's session calls them at each use). */
type Answering = { query: (...args: never[]) => Promise<unknown>; exec: (...args: never[]) => Promise<unknown>; transaction: (...args: never[]) => Promise<unknown> };

/**
 * Makes each of client's answers wait one turn of the event loop. PGlite runs in this thread and
 * answers within microtasks, so that under steady load (requests arriving while others' statements
 * run) the loop never reached its timers: a SIGTERM's drain (shutdownDrainDuration) and the stop's
 * own time limit never ended, and the server served on until killed; the lock's renewal and every
 * periodic job waited as long. A turn (setImmediate) costs about 4 µs.
 */
export function yieldTurns<T extends Answering>(client: T): T {
  for (const name of ["query", "exec", "transaction"] as const) {
    const answer = client[name].bind(client) as (...args: unknown[]) => Promise<unknown>;
    (client as Record<string, unknown>)[name] = async (...args: unknown[]) => {
      try {
        return await answer(...args);
      } finally {
        await nextTurn();
      }
    };
  }
  return client;
}
