import type { Interceptor } from "@connectrpc/connect";
import { unavailable } from "../errors";
import { Health } from "../gen/grpc/health/v1/health_pb";

/**
 * What callers see of a server's stop, in order: "serving"; "draining" (health answers
 * NOT_SERVING so that load balancers stop sending here, calls are still served, HTTP/1.1
 * answers close their connection); "refusing" (a new call is answered UNAVAILABLE at once, the
 * calls in flight finish). The listeners close after that, a matter for the entry.
 */
export type StopPhase = "serving" | "draining" | "refusing";

/** The refusal of a call that arrives once the server refuses calls: retryable, and saying why. */
export const stoppingRefusal = () =>
  unavailable("this server is stopping and takes no new calls; retry (with the same request id), against another server of the cluster or this one restarted");

/** A server's stop as its listeners apply it (createStopGate). */
export interface StopGate {
  phase(): StopPhase;
  /** Health NOT_SERVING, HTTP/1.1 answers with Connection: close; calls still served. */
  drain(): void;
  /** New calls refused (stoppingRefusal), Health's still answered. */
  refuse(): void;
  /** Aborted by refuse: streams that would run on (health Watch) end with it. */
  refusing: AbortSignal;
  /** Resolves true once no admitted call is being handled (a stream: until it started), false after timeoutMs. */
  settled(timeoutMs: number): Promise<boolean>;
  /** Counts calls in flight and refuses new ones; every listener's interceptors take it. */
  interceptor: Interceptor;
  /** fetch whose answers carry Connection: close once the stop began (HTTP/1.1 only: HTTP/2 forbids the header). */
  closing(fetch: (req: Request) => Response | Promise<Response>): (req: Request) => Response | Promise<Response>;
}

/**
 * The phases of a stop: the entry moves them on (drain, then refuse, then waits for settled
 * before it closes its listeners), so that a call arriving while the server stops gets an
 * answer, never a connection reset: until the listeners close, every request is read and
 * answered, and the answers tell HTTP/1.1 clients not to reuse the connection.
 */
export function createStopGate(): StopGate {
  let phase: StopPhase = "serving";
  let inFlight = 0;
  const refusing = new AbortController();
  const waiters = new Set<() => void>();
  const left = () => {
    if (--inFlight === 0) for (const wake of waiters) wake();
  };
  const close = (res: Response): Response => {
    if (phase === "serving") return res;
    try {
      res.headers.set("connection", "close");
      return res;
    } catch {
      // Headers of a response that came from fetch are immutable: a copy takes them.
      const copy = new Response(res.body, res);
      copy.headers.set("connection", "close");
      return copy;
    }
  };
  return {
    phase: () => phase,
    drain() {
      if (phase === "serving") phase = "draining";
    },
    refuse() {
      phase = "refusing";
      refusing.abort();
    },
    refusing: refusing.signal,
    settled(timeoutMs) {
      if (inFlight === 0) return Promise.resolve(true);
      return new Promise((resolve) => {
        const done = (idle: boolean) => {
          waiters.delete(wake);
          clearTimeout(timer);
          resolve(idle);
        };
        const wake = () => done(true);
        const timer = setTimeout(done, timeoutMs, false);
        waiters.add(wake);
      });
    },
    interceptor: (next) => async (req) => {
      // A health checker is answered NOT_SERVING to the end, not refused.
      if (phase === "refusing" && req.service.typeName !== Health.typeName) throw stoppingRefusal();
      inFlight++;
      try {
        return await next(req);
      } finally {
        left();
      }
    },
    closing: (fetch) => (req) => {
      const res = fetch(req);
      return res instanceof Promise ? res.then(close) : close(res);
    },
  };
}
