/**
 * Clients' calls in flight, and the turns background work takes with them. On PGlite a timer
 * batch runs in this thread and holds the one connection: the event loop turns only between
 * batches, so a request that came in during one was read, and reached the database, only after
 * the next had begun (a client's start waited two to three batches of 50 behind a drain).
 */
export interface TurnTaking {
  /** A client's call began; the function returned says it ended. */
  began(): () => void;
  /**
   * Background work's next turn: once the event loop has turned (calls received meanwhile
   * begin), and every call in flight then has ended, or maxWaitMs passed (a slow call, a
   * forward, holds the work back that long at most; calls begun later do not hold it).
   */
  backgroundTurn(maxWaitMs: number): Promise<void>;
}

/** Creates the turn-taking of one server's clients' calls and its background work. */
export function createTurnTaking(): TurnTaking {
  const inFlight = new Set<Promise<void>>();
  return {
    began() {
      let end!: () => void;
      const ended = new Promise<void>((resolve) => (end = resolve));
      inFlight.add(ended);
      return () => {
        inFlight.delete(ended);
        end();
      };
    },
    async backgroundTurn(maxWaitMs) {
      // A timer's turn, not setImmediate's: Bun polls the sockets then, and a request read begins its call.
      await new Promise((resolve) => setTimeout(resolve, 0));
      if (inFlight.size === 0) return;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([Promise.all(inFlight), new Promise((resolve) => (timer = setTimeout(resolve, maxWaitMs)))]);
      clearTimeout(timer);
    },
  };
}
