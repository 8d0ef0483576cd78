import { connect, createServer, type Socket } from "node:net";

/** A TCP proxy in front of a server whose connections a test can cut, as a network drop would. */
export interface TcpProxy {
  port: number;
  /** Destroys every connection through the proxy, both ways; new ones go on being accepted. */
  cut(): void;
  /** While on, every connection is reset as it arrives, as when the server is down: with cut(), an outage. */
  refuse(on: boolean): void;
  /** How many connections refuse() has reset so far. */
  readonly refused: number;
  /**
   * While on, bytes are taken in both ways but none is passed on, and new connections are
   * accepted but never answered, as with a frozen server (SIGSTOP) or a network that holds
   * every packet; off passes on what was held, in order.
   */
  hold(on: boolean): void;
  /**
   * While on, the proxy stops reading what one side sends ("toServer": the clients' bytes,
   * "toClient": the server's), so the sender's socket buffers fill and its writes back up, as
   * with a reader that is frozen (SIGSTOP) or a receive window that stays shut; the other
   * direction flows. Off reads on.
   */
  stall(direction: "toServer" | "toClient", on: boolean): void;
  /** New connections go to this target from now on (a server restarted on another port); open ones stay. */
  retarget(target: { host: string; port: number }): void;
  close(): Promise<void>;
}

/** Ends s with a TCP reset where the runtime can, else closes it. */
const reset = (s: Socket) => void (s.resetAndDestroy?.() ?? s.destroy());

/** A proxy in front of the server of a database URL, and the same URL through the proxy. */
export async function startTcpProxyFor(databaseUrl: string): Promise<{ proxy: TcpProxy; url: string }> {
  const url = new URL(databaseUrl);
  const proxy = await startTcpProxy({ host: url.hostname, port: Number(url.port || 5432) });
  url.host = `127.0.0.1:${proxy.port}`;
  return { proxy, url: url.toString() };
}

/** A proxy to target, listening on listenHost (default 127.0.0.1):listenPort (default: a free port). */
export async function startTcpProxy(
  initialTarget: { host: string; port: number },
  { listenPort = 0, listenHost = "127.0.0.1" }: { listenPort?: number; listenHost?: string } = {},
): Promise<TcpProxy> {
  let target = initialTarget;
  const sockets = new Set<Socket>();
  let refusing = false;
  let refused = 0;
  // Writes held back while holding, in arrival order.
  let held: (() => void)[] | undefined;
  // The sockets whose bytes are not read, by the direction they send in.
  const stalled = { toServer: false, toClient: false };
  const senders = { toServer: new Set<Socket>(), toClient: new Set<Socket>() };
  /** Passes from's bytes and end on to to, or keeps them back while holding. */
  const forward = (from: Socket, to: Socket) => {
    from.on("data", (chunk) => (held ? held.push(() => to.write(chunk)) : to.write(chunk)));
    from.on("end", () => (held ? held.push(() => to.end()) : to.end()));
  };
  const track = (s: Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
  };
  const server = createServer((client) => {
    if (refusing) {
      refused++;
      client.on("error", () => {});
      return reset(client);
    }
    const upstream = connect(target.port, target.host);
    track(client);
    track(upstream);
    for (const [direction, s] of [["toServer", client], ["toClient", upstream]] as const) {
      senders[direction].add(s);
      s.on("close", () => senders[direction].delete(s));
      if (stalled[direction]) s.pause();
    }
    forward(client, upstream);
    forward(upstream, client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(listenPort, listenHost, () => resolve());
  });
  const { port } = server.address() as { port: number };
  return {
    port,
    cut: () => sockets.forEach(reset),
    refuse: (on) => void (refusing = on),
    get refused() {
      return refused;
    },
    hold: (on) => {
      const writes = held;
      held = on ? (held ?? []) : undefined;
      if (!on) writes?.forEach((write) => write());
    },
    stall: (direction, on) => {
      stalled[direction] = on;
      senders[direction].forEach((s) => (on ? s.pause() : s.resume()));
    },
    retarget: (next) => void (target = next),
    close: () => {
      sockets.forEach((s) => s.destroy());
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
