import { expect, test } from "bun:test";
import { processCpuMs, threadCpuMs, threadCpuUsed, threadKind, type ThreadCpu } from "./cpu-usage";

test("ThreadsAreToldApartByTheirNamesAndTheMainOneByItsId", () => {
  const pid = 100;
  expect(threadKind("bun", pid, pid)).toBe("main");
  expect(threadKind("JITWorker", 101, pid)).toBe("jit");
  expect(threadKind("JSCWarmUp", 102, pid)).toBe("jit");
  expect(threadKind("HeapHelper", 103, pid)).toBe("gc");
  // Linux keeps a thread name's first 15 bytes; Bun's collector thread shows its tail.
  expect(threadKind("ollector Thread", 104, pid)).toBe("gc");
  expect(threadKind("HTTP Client", 105, pid)).toBe("http client");
  expect(threadKind("mi-scavenger", 106, pid)).toBe("other");
  expect(threadKind("bun", 107, pid)).toBe("other");
});

test("CpuSpentOnTheMainThreadShowsAsMain", () => {
  const [threads0, process0] = [threadCpuMs(process.pid), processCpuMs(process.pid)];
  // 300 ms of CPU on this (the main) thread, however long a busy machine takes to give it.
  const cpu0 = process.cpuUsage();
  let x = 0;
  for (let used = 0; used < 300; used = ((u) => (u.user + u.system) / 1000)(process.cpuUsage(cpu0))) {
    for (let i = 0; i < 10_000; i++) x += Math.sqrt(x + 1);
  }
  expect(x).toBeGreaterThan(0);
  const [threads1, process1] = [threadCpuMs(process.pid), processCpuMs(process.pid)];
  const main = threadCpuUsed(threads0, threads1).get("main")!;
  // Ticks are 10 ms; the process's other threads may have had some of its CPU.
  expect(main).toBeGreaterThanOrEqual(200);
  expect(main).toBeLessThanOrEqual(process1 - process0 + 10);
});

test("AProcessThatIsGoneHasNoThreads", () => {
  expect(threadCpuMs(2 ** 22 + 12345).size).toBe(0);
});

test("AThreadThatEndedBetweenTwoSamplesDropsOutAndANewOneCountsFromZero", () => {
  const t = (kind: ThreadCpu["kind"], ms: number): ThreadCpu => ({ kind, ms });
  // JIT thread 11 (900 ms so far) ended; JIT thread 13 started and used 40 ms; 12 used 60 more.
  const before = new Map([[10, t("main", 5000)], [11, t("jit", 900)], [12, t("jit", 300)]]);
  const after = new Map([[10, t("main", 5200)], [12, t("jit", 360)], [13, t("jit", 40)]]);
  expect(Object.fromEntries(threadCpuUsed(before, after))).toEqual({ main: 200, jit: 100 });
});
