import { expect, test } from "bun:test";
import { createDemoRunner } from "../../scripts/lib/demo-runner";

test("the demo's wait says how many checks it took, not a time a reader takes for replication's lag (the first says why)", async () => {
  let text = "";
  const demo = createDemoRunner({ out: (t) => void (text += t) });
  let calls = 0;
  await demo.waitFor("clusterB to hold the same histories", async () => (++calls < 3 ? "clusterB has no order-1 yet" : true), { interval: 1 });
  expect(text).toMatch(/^ {2}ok at check 3, \d+\.\ds in \(the checks run tern processes; replication's own lag: tern replication status\)$/m);
  expect(text).not.toContain("ok after");
  text = "";
  await demo.waitFor("clusterA to see orders active", async () => true);
  expect(text).toMatch(/^ {2}ok at check 1, \d+\.\ds in$/m);
});
