import { describe, expect, test } from "bun:test";
import { createServingProbe } from "../../src/frontend/serving-probe";

/** A ping that counts its calls and answers only when told to. */
function heldPing() {
  let sent = 0;
  const answers: (() => void)[] = [];
  return {
    get sent() {
      return sent;
    },
    ping: () => {
      sent++;
      return new Promise<void>((resolve) => answers.push(resolve));
    },
    answerAll: () => answers.splice(0).forEach((answer) => answer()),
  };
}

describe("the database probe behind /health and Health/Check", () => {
  test("AnswersFalseWithinItsBoundWhileThePingHangs", async () => {
    const held = heldPing();
    const probe = createServingProbe({ ping: held.ping, timeoutMs: 50 });
    const started = performance.now();
    expect(await probe()).toBe(false);
    expect(performance.now() - started).toBeLessThan(500);
  });

  test("ChecksWhileAPingHangsShareIt", async () => {
    const held = heldPing();
    const probe = createServingProbe({ ping: held.ping, timeoutMs: 50, renewMs: 60_000 });
    expect(await Promise.all([probe(), probe()])).toEqual([false, false]);
    // Past the bound: false at once, still no new ping.
    const started = performance.now();
    expect(await probe()).toBe(false);
    expect(performance.now() - started).toBeLessThan(20);
    expect(held.sent).toBe(1);
    held.answerAll();
    await Bun.sleep(0);
    // Answered: the next check sends a new ping.
    const next = probe();
    held.answerAll();
    expect(await next).toBe(true);
    expect(held.sent).toBe(2);
  });

  test("APingUnansweredForRenewMsIsReplaced", async () => {
    const held = heldPing();
    const probe = createServingProbe({ ping: held.ping, timeoutMs: 10, renewMs: 30 });
    expect(await probe()).toBe(false);
    await Bun.sleep(40);
    const next = probe();
    expect(held.sent).toBe(2);
    held.answerAll();
    expect(await next).toBe(true);
  });

  test("AFailedPingIsFalse", async () => {
    const probe = createServingProbe({ ping: () => Promise.reject(new Error("connection refused")) });
    expect(await probe()).toBe(false);
  });
});
