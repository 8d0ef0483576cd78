import type { RemoteCluster } from "./manager";

/** What a stream's ack sender needs. */
export interface AckSenderDeps {
  remote: RemoteCluster;
  /** This cluster's name, which the source records the acks under. */
  clusterName: string;
  shardIds: readonly number[];
  /** Each shard's applied position, moved by the receiver as applies commit. */
  acks: ReadonlyMap<number, number>;
  signal: AbortSignal;
  /** Makes the applies committed so far durable, before the source is told of them. */
  durable: () => Promise<void>;
  /**
   * A call failed (the next goes after a backoff): the receiver's stream reports it, once per kind
   * of failure. ownDatabase: it failed making the applies durable, before the source was called.
   */
  failed: (error: unknown, ownDatabase: boolean) => void;
  /** A call went through. */
  sent: () => void;
  /** Least time between two calls. */
  ackIntervalMs: number;
  /** How long a call waits for the source's answer. */
  timeoutMs: number;
  /** Longest wait after failed calls (the wait doubles per failure, from 100 ms). */
  maxRetryMs?: number;
}

/**
 * A receiver's (receiver.ts) acks to the source's sender (sender.ts): the positions in acks
 * that moved since the source last heard (from the call's cursors, then from each
 * AckReplicationTasks), made durable first, one call at a time and at most one per
 * ackIntervalMs. What moves meanwhile goes with the next call; a failed call's, too, after a
 * backoff, since an outage of either database fails every call until it ends.
 */
export function createAckSender({ remote, clusterName, shardIds, acks, signal, durable, failed, sent, ackIntervalMs, timeoutMs, maxRetryMs = 5_000 }: AckSenderDeps) {
  const told = new Map(acks);
  let timer: ReturnType<typeof setTimeout> | undefined;
  let acking = false;
  let sentAt = -Infinity;
  let interval = ackIntervalMs;
  const backOff = (e: unknown, ownDatabase: boolean) => {
    interval = Math.min(Math.max(interval * 2, 100), Math.max(maxRetryMs, ackIntervalMs));
    if (!signal.aborted) failed(e, ownDatabase);
  };
  const tell = async (moved: number[], values: number[]) => {
    try {
      await durable();
    } catch (e) {
      return backOff(e, true);
    }
    try {
      await remote.clients.admin.ackReplicationTasks({ clusterName, shardIds: moved, ackedTaskIds: values.map(BigInt) }, { signal, timeoutMs });
    } catch (e) {
      return backOff(e, false);
    }
    moved.forEach((id, i) => told.set(id, values[i]!));
    interval = ackIntervalMs;
    sent();
  };
  const send = () => {
    timer = undefined;
    const moved = shardIds.filter((id) => acks.get(id) !== told.get(id));
    if (acking || signal.aborted || !moved.length) return;
    const values = moved.map((id) => acks.get(id)!);
    acking = true;
    sentAt = performance.now();
    tell(moved, values).finally(() => {
      acking = false;
      schedule();
    });
  };
  const schedule = () => {
    if (acking || timer || signal.aborted) return;
    const wait = sentAt + interval - performance.now();
    if (wait <= 0) send();
    else timer = setTimeout(send, wait);
  };
  return { schedule, stop: () => clearTimeout(timer) };
}
