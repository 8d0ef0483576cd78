/** An HTTP proxy in front of a server that a test can make fail some paths, as a proxy whose route to one endpoint broke. */
export interface HttpProxy {
  port: number;
  /**
   * While set, requests whose path `matches` are answered 502 Bad Gateway (those waiting for an
   * answer too) and not passed on; the other paths go on being passed. Undefined passes all again.
   */
  failPaths(matches: ((path: string) => boolean) | undefined): void;
  /** How many requests failPaths has answered 502 so far. */
  readonly failed: number;
  /**
   * While set, requests whose path `matches` are held `ms` before they are passed on, as over a
   * slow link or to a loaded server; undefined passes all at once again.
   */
  delayPaths(matches: ((path: string) => boolean) | undefined, ms?: number): void;
  /** How many requests delayPaths has held so far. */
  readonly delayed: number;
  close(): Promise<void>;
}

const HOP_BY_HOP = ["connection", "keep-alive", "transfer-encoding", "host", "content-length"];

/** A proxy to target ("host:port"), listening on a free port of 127.0.0.1; it streams bodies both ways (Connect streams pass). */
export function startHttpProxy(target: string): HttpProxy {
  let matches: ((path: string) => boolean) | undefined;
  let failed = 0;
  let delay: { matches: (path: string) => boolean; ms: number } | undefined;
  let delayed = 0;
  /** Requests waiting for their upstream answer, by path: failPaths ends those it matches. */
  const waiting = new Map<AbortController, string>();
  const badGateway = () => (failed++, new Response("502 Bad Gateway: upstream route down\n", { status: 502, headers: { "content-type": "text/plain" } }));

  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 0,
    async fetch(req) {
      const url = new URL(req.url);
      if (matches?.(url.pathname)) return badGateway();
      if (delay?.matches(url.pathname)) {
        delayed++;
        await new Promise((r) => setTimeout(r, delay!.ms));
      }
      const headers = new Headers(req.headers);
      for (const h of HOP_BY_HOP) headers.delete(h);
      const abort = new AbortController();
      const signal = AbortSignal.any([abort.signal, req.signal]);
      waiting.set(abort, url.pathname);
      try {
        const body = req.body ? await req.arrayBuffer() : undefined;
        const res = await fetch(`http://${target}${url.pathname}${url.search}`, { method: req.method, headers, body, signal, decompress: false });
        const out = new Headers(res.headers);
        for (const h of HOP_BY_HOP) out.delete(h);
        return new Response(res.body && passOn(res.body), { status: res.status, headers: out });
      } catch {
        // Ended by failPaths, or the server went away (a test's cluster destroyed): what a proxy answers then.
        if (abort.signal.aborted) return badGateway();
        return new Response("502 Bad Gateway: upstream unreachable\n", { status: 502, headers: { "content-type": "text/plain" } });
      } finally {
        waiting.delete(abort);
      }
    },
  });

  return {
    port: server.port!,
    failPaths(next) {
      matches = next;
      if (next) for (const [abort, path] of waiting) if (next(path)) abort.abort();
    },
    get failed() {
      return failed;
    },
    delayPaths(next, ms = 0) {
      delay = next && { matches: next, ms };
    },
    get delayed() {
      return delayed;
    },
    close: () => server.stop(true),
  };
}

/** body's chunks as they come; the upstream going away mid-body ends the answer early, as a proxy's reset does, not as an error of the proxy's own. */
function passOn(body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  return new ReadableStream({
    async pull(controller) {
      try {
        const { done, value } = await reader.read();
        if (done) controller.close();
        else controller.enqueue(value);
      } catch {
        controller.close();
      }
    },
    cancel: (reason) => reader.cancel(reason),
  });
}
