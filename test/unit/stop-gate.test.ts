import { describe, expect, test } from "bun:test";
import { createStopGate } from "../../src/frontend/stop-gate";

describe("stop gate: what callers see of a stop", () => {
  test("answers close their HTTP/1.1 connection from the drain on, a response with immutable headers (as Node's fetch returns) too", async () => {
    const gate = createStopGate();
    const fetched = new Response("hi");
    Object.defineProperty(fetched.headers, "set", { value: () => { throw new TypeError("immutable headers"); } });
    const fetch1 = gate.closing(() => new Response("ok"));
    const fetch2 = gate.closing(async () => fetched);
    expect(gate.phase()).toBe("serving");
    expect((await fetch1(new Request("http://t/"))).headers.get("connection")).toBeNull();
    gate.drain();
    expect(gate.phase()).toBe("draining");
    expect((await fetch1(new Request("http://t/"))).headers.get("connection")).toBe("close");
    const copied = await fetch2(new Request("http://t/"));
    expect([copied.headers.get("connection"), await copied.text()]).toEqual(["close", "hi"]);
    gate.refuse();
    expect([gate.phase(), gate.refusing.aborted]).toEqual(["refusing", true]);
  });

  test("settled: at once with no call in flight; when the last one ends; false past its time", async () => {
    const gate = createStopGate();
    expect(await gate.settled(0)).toBe(true);
    let finish!: () => void;
    const held = new Promise<void>((r) => (finish = r));
    const call = gate.interceptor(async () => (await held, {}) as never)({ service: { typeName: "x" } } as never);
    expect(await gate.settled(10)).toBe(false);
    const settled = gate.settled(60_000);
    finish();
    await call;
    expect(await settled).toBe(true);
  });
});
