import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A suite's temporary directory for its servers' config, data and logs. */
export interface ScratchDir {
  readonly dir: string;
  /** Called as the last line of the suite's test: it got to its end. */
  passed(): void;
  /** For afterAll: removes the directory if the test passed, else keeps it and says where (returns whether it was kept). */
  done(): boolean;
}

/**
 * A temporary directory (under the OS's) removed after a suite whose test passed. A failed
 * one's, a seed's say, is kept, with its servers' logs to read, and say prints where: removed
 * with the rest, a failing seed left nothing but the test's own output.
 */
export function scratchDir(prefix: string, say: (line: string) => void = console.error): ScratchDir {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  let ok = false;
  return {
    dir,
    passed: () => void (ok = true),
    done() {
      if (ok) rmSync(dir, { recursive: true, force: true });
      else say(`${prefix.replace(/-$/, "")}: the test did not pass; its servers' logs are kept in ${dir} (<cluster>/server*.log)`);
      return !ok;
    },
  };
}
