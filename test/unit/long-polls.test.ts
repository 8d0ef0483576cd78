import { describe, expect, test } from "bun:test";
import { createLongPolls } from "../../src/long-polls";

describe("createLongPolls", () => {
  test("run hands the poll a signal that aborts with the caller's or on end, and end waits for the poll", async () => {
    const polls = createLongPolls(() => new Error("stopping"));
    const caller = new AbortController();
    let seen: AbortSignal | undefined;
    const first = polls.run(caller.signal, async (s) => ((seen = s), "a"));
    expect(await first).toBe("a");
    expect(seen).not.toBe(caller.signal);
    caller.abort();
    expect(seen!.aborted).toBe(true);

    let finish!: () => void;
    const held = polls.run(undefined, (s) => new Promise<boolean>((r) => (finish = () => r(s.aborted))));
    let ended = false;
    const ending = polls.end().then(() => (ended = true));
    await Promise.resolve();
    expect(ended).toBe(false);
    finish();
    expect(await held).toBe(true);
    await ending;
    expect(ended).toBe(true);
    await expect(polls.run(undefined, async () => 1)).rejects.toThrow("stopping");
  });

  test("a linked signal is passed through as it is to each run (a stream's rounds join it once), and still aborts on end", async () => {
    const polls = createLongPolls(() => new Error("stopping"));
    const caller = new AbortController();
    const linked = polls.link(caller.signal);
    const seen: AbortSignal[] = [];
    for (let i = 0; i < 3; i++) await polls.run(linked, async (s) => seen.push(s));
    expect(seen).toEqual([linked, linked, linked]);
    expect(linked.aborted).toBe(false);
    await polls.end();
    expect(linked.aborted).toBe(true);
    expect(caller.signal.aborted).toBe(false);
  });
});
