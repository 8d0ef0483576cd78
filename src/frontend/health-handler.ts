import type { ServiceImpl } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb";

/** grpc.health.v1.Health: SERVING while the server runs and its database answers. */
export function createHealthHandler(isServing: () => Promise<boolean>): ServiceImpl<typeof Health> {
  const status = async () =>
    (await isServing()) ? HealthCheckResponse_ServingStatus.SERVING : HealthCheckResponse_ServingStatus.NOT_SERVING;
  return {
    async check() {
      return { status: await status() };
    },
    async *watch(_req, ctx) {
      let last: HealthCheckResponse_ServingStatus | undefined;
      while (!ctx.signal.aborted) {
        const now = await status();
        if (now !== last) yield { status: (last = now) };
        await new Promise((r) => setTimeout(r, 1000));
      }
    },
  };
}
