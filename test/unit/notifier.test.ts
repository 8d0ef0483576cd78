import { describe, expect, test } from "bun:test";
import { createEventNotifier, listenAny } from "../../src/history/notifier";

/** Whether p settles within ms. */
const settles = (p: Promise<unknown>, ms = 20) => Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

describe("EventNotifier.waitAny: one wait on many keys", () => {
  test("ANotifyOfAnyKeyWakesIt, and of no other key", async () => {
    const n = createEventNotifier();
    const waiting = n.waitAny(["shard:1", "shard:2", "shard:3"], 10_000);
    n.notify("shard:9");
    expect(await settles(waiting)).toBe(false);
    n.notify("shard:2");
    expect(await settles(waiting)).toBe(true);
  });

  test("OnceItEndsItIsGoneFromEveryKey, whichever way it ended", async () => {
    const n = createEventNotifier();
    const keys = Array.from({ length: 512 }, (_, i) => `shard:${i + 1}`);
    const woken = n.waitAny(keys, 10_000);
    const timedOut = n.waitAny(keys, 5);
    const stop = new AbortController();
    const aborted = n.waitAny(keys, 10_000, stop.signal);
    expect(n.keysWaited()).toBe(512);
    await timedOut;
    stop.abort();
    await aborted;
    expect(n.keysWaited()).toBe(512);
    n.notify("shard:7");
    await woken;
    expect(n.keysWaited()).toBe(0);
  });

  test("EndsOnItsTimeout, and at once for a signal already aborted or aborted later", async () => {
    const n = createEventNotifier();
    expect(await settles(n.waitAny(["a", "b"], 5), 200)).toBe(true);
    expect(await settles(n.waitAny(["a", "b"], 10_000, AbortSignal.abort()))).toBe(true);
    const stop = new AbortController();
    const waiting = n.waitAny(["a", "b"], 10_000, stop.signal);
    expect(await settles(waiting)).toBe(false);
    stop.abort();
    expect(await settles(waiting)).toBe(true);
  });

  test("listenAny: a notify between listening and awaiting still wakes it; cancel ends it", async () => {
    const n = createEventNotifier();
    const listening = listenAny(n, ["shard:1", "shard:2"], 10_000);
    n.notify("shard:1");
    expect(await settles(listening.woke)).toBe(true);
    const other = listenAny(n, ["shard:1", "shard:2"], 10_000);
    other.cancel();
    expect(await settles(other.woke)).toBe(true);
  });

  test("listenAny's cancel leaves nothing behind: no key waited, no listener on the signal, no abort", async () => {
    // A stream's source listens and cancels twice per message it sends.
    const n = createEventNotifier();
    const stop = new AbortController();
    let listeners = 0;
    const { signal } = stop;
    const [add, remove] = [signal.addEventListener.bind(signal), signal.removeEventListener.bind(signal)];
    signal.addEventListener = (...a: Parameters<typeof add>) => (listeners++, add(...a));
    signal.removeEventListener = (...a: Parameters<typeof remove>) => (listeners--, remove(...a));
    // An abort makes an AbortError with its stack, and an event: none is wanted here.
    const abort = AbortController.prototype.abort;
    let aborts = 0;
    AbortController.prototype.abort = function (this: AbortController, reason?: unknown) {
      aborts++;
      abort.call(this, reason);
    };
    try {
      for (let i = 0; i < 1000; i++) {
        const listening = listenAny(n, ["shard:1", "shard:2"], 10_000, signal);
        if (i % 2) n.notify("shard:2");
        listening.cancel();
        listening.cancel();
        await listening.woke;
      }
    } finally {
      AbortController.prototype.abort = abort;
    }
    expect(n.keysWaited()).toBe(0);
    expect(listeners).toBe(0);
    expect(aborts).toBe(0);
    expect(signal.aborted).toBe(false);
  });
});
