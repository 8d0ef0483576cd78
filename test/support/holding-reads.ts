import type { Db } from "../../src/persistence/database";

/** While `on`, matching selects keep their result `ms` after the database answered; `held` counts them. */
export interface Hold {
  on: boolean;
  ms: number;
  held: number;
}

/**
 * db, whose selects (from a table `holds` accepts; every table by default), while `hold.on`,
 * keep their result for `hold.ms` after the database answered: the time between a read and
 * what the reader does next, made long.
 */
export function holdingReads(db: Db, hold: Hold, holds: (table: unknown) => boolean = () => true): Db {
  return new Proxy(db, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (prop !== "select" || typeof value !== "function") return value;
      return (...args: unknown[]) => {
        const selection = value.apply(target, args) as { from: (...a: unknown[]) => PromiseLike<unknown> };
        const from = selection.from.bind(selection);
        selection.from = (...a: unknown[]) => {
          // The query's methods return the query itself: its own `then` is what gets awaited.
          const query = from(...a);
          if (!holds(a[0])) return query;
          const then = query.then.bind(query);
          Object.defineProperty(query, "then", {
            value: (ok: (v: unknown) => unknown, fail: (e: unknown) => unknown) =>
              then(async (rows) => {
                if (hold.on) {
                  hold.held++;
                  await new Promise((r) => setTimeout(r, hold.ms));
                }
                return rows;
              }).then(ok, fail),
          });
          return query;
        };
        return selection;
      };
    },
  });
}
