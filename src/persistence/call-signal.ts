import type { Db, Tx } from "./database";

/**
 * A call's signal in the database work it asked for (connect-es aborts a handler's
 * `ctx.signal` at the call's deadline, or when its client leaves). The client of such a call
 * has its answer (DEADLINE_EXCEEDED, CANCELED): its write must not commit after it. A
 * transaction that takes a signal does not send COMMIT once it fired (it rolls back), and a
 * statement of it in flight then (waiting for a lock another session holds, say) is
 * cancelled on PostgreSQL, so the wait ends with the call. A COMMIT already sent cannot be
 * taken back: a signal that fires while it travels leaves a write the client may not know of
 * (its retry with the same request id finds it).
 */

/** A postgres.js query as a canceller needs it: active while PostgreSQL runs it; cancel() sends PostgreSQL a cancel request for it. */
interface CancellableQuery {
  active?: boolean;
  cancel(): unknown;
}

/** Tracks a transaction's statements for a call's signal (see createQueryCanceller). */
export interface QueryCanceller {
  /** Hands q back, to be cancelled if it runs when the signal fires; throws the signal's reason instead once it fired. */
  track<Q extends CancellableQuery>(q: Q): Q;
  /** Lets go of the signal once the cancel requests sent reached PostgreSQL: call it before the connection goes back to the pool. */
  stop(): Promise<void>;
}

/**
 * Cancels, once signal fires, the tracked statement PostgreSQL runs then (one waiting for a
 * lock, say), which fails the transaction. Only that one: postgres.js would send a cancel for a
 * statement pipelined behind it when it starts, which may be after the transaction ended, into
 * the next user of the connection. A cancel request arriving while the connection is idle does
 * nothing; stop() waits for those sent, so none reaches another transaction's statement.
 */
export function createQueryCanceller(signal: AbortSignal | undefined): QueryCanceller {
  if (!signal) return { track: (q) => q, stop: async () => {} };
  const queries = new Set<CancellableQuery>();
  const sent: Promise<unknown>[] = [];
  const cancel = () => {
    for (const q of queries) if (q.active) sent.push(Promise.resolve(q.cancel()).catch(() => {}));
  };
  signal.addEventListener("abort", cancel, { once: true });
  return {
    track(q) {
      signal.throwIfAborted();
      queries.add(q);
      return q;
    },
    async stop() {
      signal.removeEventListener("abort", cancel);
      await Promise.all(sent);
    },
  };
}

/** A drizzle postgres-js session or prepared query: its postgres.js client, whose unsafe() runs its statements. PGlite's have none. */
interface ClientHolder {
  client?: { unsafe?: (...args: never[]) => CancellableQuery };
}

/** Routes holder's statements through canceller (drizzle postgres-js: sessions and prepared queries read `client` when they run). */
export function cancelThrough(holder: ClientHolder, canceller: QueryCanceller): void {
  const client = holder.client;
  if (typeof client?.unsafe !== "function") return;
  const unsafe = client.unsafe.bind(client);
  holder.client = new Proxy(client, {
    get: (target, key, receiver) => (key === "unsafe" ? (...args: never[]) => canceller.track(unsafe(...args)) : Reflect.get(target, key, receiver)),
  });
}

/**
 * db.transaction for the work of a call: with signal, it does not commit once the signal
 * fired, and a statement in flight then is cancelled (PostgreSQL); the transaction then
 * rejects with the signal's reason (connect-es: a ConnectError naming the deadline or the cancel).
 */
export async function transaction<T>(db: Db, fn: (tx: Tx) => Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return db.transaction(fn);
  signal.throwIfAborted();
  try {
    return await db.transaction(async (tx) => {
      const canceller = createQueryCanceller(signal);
      cancelThrough((tx as unknown as { session: ClientHolder }).session, canceller);
      try {
        const result = await fn(tx);
        // Last before COMMIT: a throw here rolls the transaction back.
        signal.throwIfAborted();
        return result;
      } finally {
        await canceller.stop();
      }
    });
  } catch (e) {
    // A statement the signal cancelled fails as PostgreSQL's 57014: the call ended, say so.
    signal.throwIfAborted();
    throw e;
  }
}
