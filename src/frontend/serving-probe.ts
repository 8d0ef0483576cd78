/**
 * How long /health and Health/Check wait for the database's `select 1` before answering
 * NOT_SERVING. A frozen PostgreSQL (SIGSTOP, a network that holds every byte) never answers;
 * a health checker must hear NOT_SERVING well within its own timeout (Kubernetes: 1 s by
 * default, commonly raised to a few seconds) rather than time out itself.
 */
export const SERVING_PROBE_TIMEOUT_MS = 2_000;

/**
 * How long an unanswered ping is shared before the next check sends a new one. A ping can hang
 * on a connection that will never answer while new connections would: this bounds how long
 * health stays NOT_SERVING after the database came back, and how many hung pings pile up (one
 * per this long).
 */
export const SERVING_PROBE_RENEW_MS = 30_000;

/**
 * `() => Promise<boolean>`: whether ping answers within timeoutMs of when it was sent. Checks
 * made while a ping is in flight share it (a health checker polling every second sends no
 * more queries to a frozen database), and one made after the shared ping's timeoutMs passed
 * answers false at once.
 */
export function createServingProbe({
  ping,
  timeoutMs = SERVING_PROBE_TIMEOUT_MS,
  renewMs = SERVING_PROBE_RENEW_MS,
}: {
  ping: () => Promise<unknown>;
  timeoutMs?: number;
  renewMs?: number;
}): () => Promise<boolean> {
  let inflight: { sentAt: number; answered: Promise<boolean> } | undefined;
  const send = (sentAt: number) => {
    const sent = {
      sentAt,
      answered: ping().then(() => true, () => false).finally(() => {
        if (inflight === sent) inflight = undefined;
      }),
    };
    return (inflight = sent);
  };
  return async () => {
    const now = performance.now();
    const { sentAt, answered } = inflight && now - inflight.sentAt < renewMs ? inflight : send(now);
    const left = sentAt + timeoutMs - now;
    if (left <= 0) return false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<boolean>((resolve) => (timer = setTimeout(resolve, left, false)));
    try {
      return await Promise.race([answered, late]);
    } finally {
      clearTimeout(timer);
    }
  };
}
