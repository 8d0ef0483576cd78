/**
 * A process that tries to lock a PGlite data dir at a given moment (test/integration/durability.test.ts):
 * `bun test/support/lock-contender.ts DIR AT_MS` prints "held" (and holds it 300 ms) or "refused".
 */
import { acquireDataDirLock } from "../../src/persistence/lock";

const [dataDir, at] = [process.argv[2]!, Number(process.argv[3])];
while (Date.now() < at) {} // spin, not sleep: the contenders start within microseconds of each other
try {
  const lock = acquireDataDirLock(dataDir);
  console.log("held");
  await Bun.sleep(300);
  lock.release();
} catch {
  console.log("refused");
}
