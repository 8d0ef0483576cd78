import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb";
import { shown } from "../shown";
import { sleep } from "../sleep";

/**
 * grpc.health.v1.Health: SERVING while the server runs and its database answers, for the server
 * ("") and each service it serves (services: their full names). Another name is NOT_FOUND
 * (Check) or SERVICE_UNKNOWN (Watch), as the health protocol says: a probe with a misspelt
 * service name must fail, not pass whatever the server's state. A Watch ends once `stopped`
 * aborts (the server refuses new calls), after its NOT_SERVING: else it held the stopping
 * server's listener until the grace ran out, and was cut there.
 */
export function createHealthHandler(isServing: () => Promise<boolean>, services: readonly string[], stopped: AbortSignal): ServiceImpl<typeof Health> {
  const known = new Set(["", ...services]);
  const status = async () =>
    (await isServing()) ? HealthCheckResponse_ServingStatus.SERVING : HealthCheckResponse_ServingStatus.NOT_SERVING;
  return {
    async check(req) {
      if (!known.has(req.service)) throw new ConnectError(`unknown service ${shown(req.service, { quote: true })}`, Code.NotFound);
      return { status: await status() };
    },
    async *watch(req, ctx) {
      const ended = AbortSignal.any([ctx.signal, stopped]);
      if (!known.has(req.service)) {
        yield { status: HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN };
        if (!ended.aborted) await new Promise((r) => ended.addEventListener("abort", r, { once: true }));
        return;
      }
      let last: HealthCheckResponse_ServingStatus | undefined;
      while (!ctx.signal.aborted) {
        const now = await status();
        if (now !== last) yield { status: (last = now) };
        if (stopped.aborted) return;
        await sleep(1000, ended);
      }
    },
  };
}
