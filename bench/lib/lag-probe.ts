import type { ClusterClients } from "./replication-workload";

/** One probe sample (ms): the signal's round trip on A, and its ack on A → event visible on B. */
export interface ProbeSample {
  writeMs: number;
  ackToVisibleMs: number;
}

/**
 * End-to-end lag probe: holds a long poll (waitNewEvent) on B for the probe run, signals
 * it on A, and times A's ack → B's answer with that event. Same machine, one clock.
 */
export async function runLagProbe(o: {
  a: ClusterClients;
  b: ClusterClients;
  namespace: string;
  workflowId: string;
  intervalMs: number;
  signal: AbortSignal;
}): Promise<{ samples: ProbeSample[]; errors: number; firstError?: string }> {
  const { a, b, namespace, workflowId } = o;
  const samples: ProbeSample[] = [];
  let errors = 0;
  let firstError: string | undefined;
  await a.workflow.startWorkflowExecution({ namespace, workflowId, workflowType: "Probe", taskQueue: "probe", requestId: crypto.randomUUID() });
  const execution = { workflowId, runId: "" };
  // Read B's copy to its end once, so the token points past every event already there.
  let token: Uint8Array = new Uint8Array();
  for (let t0 = performance.now(); performance.now() - t0 < 30_000; ) {
    const res = await b.workflow.getWorkflowExecutionHistory({ namespace, execution, maximumPageSize: 1000 }).catch(() => undefined);
    if (res?.history?.events.length) {
      token = res.nextPageToken;
      break;
    }
    await Bun.sleep(20);
  }
  while (!o.signal.aborted) {
    try {
      const sample = await probeOnce();
      if (sample) samples.push(sample);
    } catch (e) {
      errors++;
      firstError ??= (e as Error).message;
    }
    await Bun.sleep(o.intervalMs);
  }
  return { samples, errors, firstError };

  async function probeOnce(): Promise<ProbeSample | undefined> {
    let acked: { eventId: number; at: number } | undefined;
    let maxSeen = 0;
    let seenAt = 0;
    const stop = new AbortController();
    const poll = async () => {
      // Long-poll until B returns the acked event (a poll may return earlier events first).
      while (!(acked && maxSeen >= acked.eventId)) {
        if (acked && performance.now() - acked.at > 10_000) throw new Error("probe event not on B within 10 s");
        const res = await b.workflow.getWorkflowExecutionHistory(
          { namespace, execution, nextPageToken: token, waitNewEvent: true, waitTimeout: { seconds: 10n }, maximumPageSize: 1000 },
          { timeoutMs: 15_000, signal: stop.signal },
        ).catch((e) => {
          if (stop.signal.aborted) return undefined;
          throw e;
        });
        if (!res) return;
        if (res.nextPageToken.length) token = res.nextPageToken;
        const last = Number(res.history?.events.at(-1)?.eventId ?? 0);
        if (last > maxSeen) [maxSeen, seenAt] = [last, performance.now()];
      }
    };
    const polling = poll();
    polling.catch(() => {}); // awaited below; this only keeps an early failure from going unhandled if the write throws first
    await Bun.sleep(2); // let the long poll reach B before the write
    const sent = performance.now();
    const res = await a.workflow.signalWorkflowExecution({ namespace, workflowExecution: execution, signalName: "probe", requestId: crypto.randomUUID() });
    acked = { eventId: Number(res.eventId), at: performance.now() };
    // B answered before A's ack came back: the poll already returned it and waits for more.
    if (maxSeen >= acked.eventId) stop.abort();
    await polling;
    return { writeMs: acked.at - sent, ackToVisibleMs: seenAt - acked.at };
  }
}
