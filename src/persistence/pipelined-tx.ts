import type { Sql } from "postgres";
import { connectionLost } from "../errors";
import { cancelThrough, createQueryCanceller, type QueryCanceller } from "./call-signal";
import type { Db, Tx } from "./database";

/**
 * Transactions whose statements travel in two batches on PostgreSQL: BEGIN goes out with
 * the first reads, COMMIT right behind the writes (`commit()` is called once every write
 * is issued). A write is then two round trips, not four or more: loopback socket writes
 * were the largest single cost of a write on A.
 *
 * The callback's tx serves hand-written statements only (runStatement); a query builder
 * call on it fails. Whatever must veto the commit has to fail as a statement before it
 * (a failed statement aborts the transaction, and the COMMIT behind it then rolls back):
 * checks in JavaScript belong before `commit()`. A statement runStatement refuses
 * (paramsRefusal) never reaches the connection and fails the transaction: the statements
 * issued before it roll back, and COMMIT is not sent (a refusal after `commit()` is a check
 * in JavaScript after it).
 *
 * A connection PostgreSQL ended (a restart, a failover, an operator's terminate) fails the
 * transaction, and nothing more is sent on it, not even ROLLBACK. Nor is it handed back to
 * the pool, which reconnects it. That is known from a statement of the transaction failing;
 * one that closed while none was in flight fails the next statement sent as CONNECTION_CLOSED
 * (postgres.js threw from a timer there, outside any promise, which ends the process, and
 * could write into the session the pool had reconnected the connection for:
 * porsager/postgres#1208, mend 10 of scripts/patch-dependencies.mjs).
 *
 * A call's signal (call-signal.ts): once it fired, COMMIT is not sent, and the statement of fn's
 * PostgreSQL runs then is cancelled (a COMMIT already queued behind it then rolls the
 * transaction back); the run rejects with the signal's reason.
 */
export interface PipelinedTransactions {
  run<T>(fn: (tx: Tx, commit: () => void) => Promise<T>, beforeCommit?: () => Promise<void> | void, signal?: AbortSignal): Promise<T>;
}

export function createPipelinedTransactions(client: Sql): PipelinedTransactions {
  return {
    async run(fn, beforeCommit, signal) {
      signal?.throwIfAborted();
      const c = await client.reserve();
      const canceller = createQueryCanceller(signal);
      // Set, before anyone awaiting a statement hears of it, once one failed with the connection;
      // gone then fails every statement still pending: postgres.js leaves those it holds back
      // on a busy reserved connection (behind a first statement's Parse) pending forever.
      let lost: Error | undefined;
      let lose!: (e: Error) => void;
      const gone = new Promise<never>((_, reject) => (lose = reject));
      gone.catch(() => {});
      // Each statement is handed to the connection when issued, so the connection sends
      // them in issue order; a rejection nobody awaits (after an earlier failure) is expected.
      // ours: a statement of fn's, which the signal cancels (not BEGIN, COMMIT or ROLLBACK).
      const issue = (text: string, params: unknown[] = [], ours = false) => {
        const refusal = lost ?? (ours && signal?.aborted ? signal.reason : undefined);
        if (refusal) {
          // Awaited by fn, or not at all (a COMMIT after the loss).
          const refused = Promise.reject(refusal);
          refused.catch(() => {});
          return refused;
        }
        const query = c.unsafe(text, params as never[], { prepare: true });
        const q = (ours ? canceller.track(query) : query).execute();
        q.catch((e: unknown) => {
          if (lost || !connectionLost(e)) return;
          lost = e as Error;
          lose(lost);
        });
        const settled = Promise.race([q, gone]);
        settled.catch(() => {});
        return settled;
      };
      const begun = issue("begin");
      let committed: ReturnType<typeof issue> | undefined;
      let refused: Error | undefined;
      // With a test hook before commit, COMMIT waits for fn and the hook.
      const commit = () => {
        if (signal?.aborted) refused ??= signal.reason as Error;
        if (!beforeCommit && !refused) committed ??= issue("commit");
      };
      const tx = {
        _: {
          session: {
            prepareQuery: (q: { sql: string; params: unknown[] }) => ({ execute: () => issue(q.sql, q.params, true) }),
            refuse: (e: Error) => void (refused ??= e),
          },
        },
      } as unknown as Tx;
      try {
        const result = await fn(tx, commit);
        await begun;
        if (refused) throw refused;
        if (!committed) {
          await beforeCommit?.();
          signal?.throwIfAborted();
          committed = issue("commit");
        }
        const done = await committed;
        // COMMIT of an aborted transaction answers ROLLBACK: a statement fn did not await failed.
        if (done.command !== "COMMIT") throw new Error(`transaction rolled back (${done.command}): a statement in it failed`);
        return result;
      } catch (e) {
        // Before COMMIT went out: roll back. After: the failed statement aborted the
        // transaction and the COMMIT rolled it back (or, for a check in JavaScript that
        // should have run before commit(), committed it: see above).
        if (!lost) await (committed ?? issue("rollback")).catch(() => {});
        // A statement the signal cancelled fails as PostgreSQL's 57014: the call ended, say so.
        signal?.throwIfAborted();
        throw e;
      } finally {
        await canceller.stop();
        // A lost connection is the pool's again already (closed; it reconnects it on demand).
        if (!lost) c.release();
      }
    },
  };
}

/** Throws from its second call on: a single statement's write issued a second, which would commit apart from the first. */
function oneStatementOnly(): () => void {
  let used = false;
  return () => {
    if (used) throw new Error("a single statement's write issued a second statement: it would not be atomic with the first");
    used = true;
  };
}

/**
 * db as a Tx for exactly one hand-written statement (runStatement), which PostgreSQL runs as
 * a transaction of its own: it commits when it succeeds and leaves nothing when it fails. A
 * second statement is refused before it is sent: it would commit apart from the first.
 * With canceller, the statement is cancelled if its signal fires while PostgreSQL runs it.
 */
export function singleStatement(db: Db, canceller?: QueryCanceller): Tx {
  const session = db._.session;
  const once = oneStatementOnly();
  return {
    _: {
      session: {
        prepareQuery: (...args: Parameters<typeof session.prepareQuery>) => {
          once();
          const q = session.prepareQuery(...args);
          if (canceller) cancelThrough(q as Parameters<typeof cancelThrough>[0], canceller);
          return q;
        },
      },
    },
  } as unknown as Tx;
}
