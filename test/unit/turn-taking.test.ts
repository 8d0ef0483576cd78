import { describe, expect, test } from "bun:test";
import { createTurnTaking } from "../../src/turn-taking";

describe("turn-taking of clients' calls and background work", () => {
  test("a background turn waits for the calls in flight when it is asked for, not for those begun after", async () => {
    const turns = createTurnTaking();
    const endFirst = turns.began();
    let turned = false;
    const turn = turns.backgroundTurn(60_000).then(() => void (turned = true));
    // Once the turn's timer has run: a call begun now does not hold it.
    await new Promise((r) => setTimeout(r, 5));
    const endLater = turns.began();
    expect(turned).toBe(false);
    endFirst();
    await turn;
    expect(turned).toBe(true);
    endLater();
  });

  test("a call that never ends holds a background turn for maxWaitMs at most", async () => {
    const turns = createTurnTaking();
    turns.began();
    await turns.backgroundTurn(20);
  });

  test("with no call in flight a background turn is one turn of the event loop", async () => {
    const turns = createTurnTaking();
    turns.began()();
    let turned = false;
    void turns.backgroundTurn(60_000).then(() => void (turned = true));
    await new Promise((r) => setTimeout(r, 5));
    expect(turned).toBe(true);
  });
});
