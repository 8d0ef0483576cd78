import { describe, expect, test } from "bun:test";
import { splitAtFrontier, type RunChecksum } from "../../replication/verify-page";

const run = (workflowId: string): RunChecksum => ({ workflowId, runId: "r", eventCount: 1n, checksum: "c" });
/** Places in the walks' order: here, the workflow ids' order. */
const rank = (x: { workflowId: string }) => "abcdefgh".indexOf(x.workflowId);
const ids = (runs: RunChecksum[] | undefined) => runs?.map((x) => x.workflowId);

describe("splitAtFrontier: a verify page compares the runs both walks have passed", () => {
  const cases: { name: string; previous?: string; local: [string[], boolean]; remote: [string[], boolean]; compared: [string[], string[]]; frontier?: string; carry?: ["local" | "remote", string[]]; done: boolean }[] = [
    { name: "both walks done: every run compared", local: [["a", "b"], true], remote: [["a", "c"], true], compared: [["a", "b"], ["a", "c"]], done: true },
    { name: "the remote's page ends sooner: this side's runs past it wait", local: [["a", "c", "e"], true], remote: [["a", "b"], false], compared: [["a"], ["a", "b"]], frontier: "b", carry: ["local", ["c", "e"]], done: false },
    { name: "a side done with no runs left passes every run", previous: "b", local: [["c", "d"], false], remote: [[], true], compared: [["c", "d"], []], frontier: "d", done: false },
    { name: "a page that finished no run (stopped in a large one): nothing compared yet", local: [["a", "b"], false], remote: [[], false], compared: [[], []], carry: ["local", ["a", "b"]], done: false },
    { name: "after a frontier, a page that finished no run keeps it", previous: "b", local: [["d"], false], remote: [[], false], compared: [[], []], frontier: "b", carry: ["local", ["d"]], done: false },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const split = splitAtFrontier(rank, c.previous ? run(c.previous) : undefined, { runs: c.local[0].map(run), done: c.local[1] }, { runs: c.remote[0].map(run), done: c.remote[1] });
      expect([ids(split.local), ids(split.remote)]).toEqual(c.compared);
      expect([split.frontier?.workflowId, split.carry && [split.carry.side, ids(split.carry.runs)], split.done]).toEqual([c.frontier, c.carry, c.done]);
    });
  }

  test("walks in other orders (databases of other collations) fail the page rather than report runs missing", () => {
    expect(() => splitAtFrontier(rank, run("c"), { runs: [run("d")], done: false }, { runs: [run("b")], done: false })).toThrow("the remote cluster's checksums come in another order than this cluster's");
    expect(() => splitAtFrontier(rank, undefined, { runs: [run("a")], done: false }, { runs: [run("c"), run("b")], done: false })).toThrow("in another order");
  });
});
