import { closeSync, linkSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, statSync, unlinkSync, utimesSync, writeFileSync, writeSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { FIRST_START_MARKER } from "./pglite-first-start";

/** A held lock on a PGlite data dir. */
export interface DataDirLock {
  path: string;
  release(): void;
}

/** Thrown when another live process holds the data dir. */
export class DataDirLockedError extends Error {
  override name = "DataDirLockedError";
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * A process told apart from a later one with the same pid, where /proc says (Linux): this
 * boot's id and the process's start time, in clock ticks since boot. Undefined elsewhere,
 * and for a zombie (dead, not yet reaped), which holds nothing open.
 */
function startOf(pid: number): { alive: boolean; identity?: string } {
  let stat: string;
  let boot: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    boot = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return { alive: isAlive(pid) };
  }
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, the fields after it do not.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { alive: fields[0] !== "Z", identity: `${boot}/${fields[19]}` };
}

/**
 * This process's host as its lock names it: the machine's, or the container's (each container
 * has a host name and a pid space of its own; processes on two hosts sharing a data dir, on a
 * shared volume, cannot see each other's pids).
 */
const HOST = encodeURIComponent(hostname()) || "-";

/** How often a held lock's file is touched, so that processes on other hosts can tell it is held. */
const RENEW_MS = 5_000;

/**
 * How long after its last touch a lock taken on another host counts as left by a process that is
 * gone. A process that holds one touches it every RENEW_MS.
 */
export const FOREIGN_LOCK_LEASE_MS = 30_000;

/**
 * Whether the lock's owner (its file's "pid identity host") still runs: on this host, the same
 * process, not a later one given its pid; on another, one that touched the lock within
 * FOREIGN_LOCK_LEASE_MS (its pid means nothing here: a process of another container may have
 * this very pid, pid 1 in both, say). Undefined when it does not run, or else why it is taken for
 * running.
 */
function ownerRuns(owner: number, identity: string | undefined, host: string | undefined, lock: string): string | undefined {
  if (host !== undefined && host !== HOST) {
    let age: number;
    try {
      age = Date.now() - statSync(lock).mtimeMs;
    } catch {
      return undefined; // released meanwhile
    }
    if (age >= FOREIGN_LOCK_LEASE_MS) return undefined;
    return `is in use by process ${owner} on host ${decodeURIComponent(host)} (lock ${lock}, renewed ${Math.max(0, Math.round(age / 1000))} s ago; ` +
      `a lock from another host is taken over once ${FOREIGN_LOCK_LEASE_MS / 1000} s pass without renewal)`;
  }
  if (!Number.isFinite(owner) || owner === process.pid) return undefined;
  const now = startOf(owner);
  if (!now.alive) return undefined;
  const same = identity === undefined || identity === "-" || now.identity === undefined || identity === now.identity;
  return same ? `is in use by process ${owner} (lock ${lock})` : undefined;
}

/**
 * PGlite takes no lock of its own: two processes on one dir corrupt it. The lock is a
 * file holding the owner's pid (and, on Linux, what tells it from a later process with the
 * same pid) and host, created exclusively; a lock whose owner is gone is stale and taken over.
 * An owner on another host (a container sharing the dir through a volume) is taken for gone
 * once its lock has not been touched for FOREIGN_LOCK_LEASE_MS.
 */
export function acquireDataDirLock(dataDir: string): DataDirLock {
  writable(dataDir, "cannot be created", () => mkdirSync(dataDir, { recursive: true }));
  const path = join(dataDir, "tern.lock");
  const { identity } = startOf(process.pid);
  const mine = `${process.pid} ${identity ?? "-"} ${HOST}`;
  // Written whole under a name of this process's own, then linked into place (which fails if a
  // lock is there): created empty and written after, it was read empty by a process starting at
  // the same time, taken for stale, and both went on to open the database.
  const draft = `${path}.${process.pid}`;
  writable(dataDir, "cannot be written", () => writeFileSync(draft, mine));
  try {
    // Each attempt that meets another process's takeover waits 10 ms: about 2 s in all.
    for (let attempt = 0; attempt < 200; attempt++) {
      if (place(draft, path, mine)) return heldLock(path, mine);
      let held: string;
      try {
        held = readFileSync(path, "utf8");
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") continue; // released meanwhile
        throw e;
      }
      // "pid identity host" ("-" for an identity /proc cannot give), or from earlier builds "pid
      // identity" or "pid": a pid alone may have been given to another process since (after a
      // reboot, say), or be a zombie's.
      const [pid, ownerIdentity, ownerHost] = held.trim().split(" ");
      const owner = Number.parseInt(pid!, 10);
      const running = ownerRuns(owner, ownerIdentity, ownerHost, path);
      if (running) throw new DataDirLockedError(`data dir ${dataDir} ${running}`);
      takeOverStale(path, held);
    }
  } finally {
    try {
      unlinkSync(draft);
    } catch {}
  }
  throw new DataDirLockedError(`could not lock data dir ${dataDir}`);
}

/**
 * A server's start refused a held data dir (DataDirLockedError; e otherwise): what to do, with the setting and flag
 * README names. The CLI's db commands say their own (cli/errors.ts).
 */
export function heldAtStart(e: unknown): unknown {
  if (!(e instanceof DataDirLockedError)) return e;
  return new DataDirLockedError(
    `${e.message}; stop the tern server (or command) using it first, or give this server another data directory: ` +
      "a copy of its config file with another persistence.datastore.pglite.dataDir (and ports), started with --config PATH",
    { cause: e },
  );
}

/** The data dir as messages name it: the path and the setting that chose it. */
function dataDirSetting(dataDir: string): string {
  return `the PGlite data directory ${dataDir} (persistence.datastore.pglite.dataDir)`;
}

/**
 * Runs a step that creates or writes the data dir; its failure (a read-only or another user's
 * directory, a path under /proc) names the setting, not only the system call.
 */
function writable(dataDir: string, what: string, step: () => void): void {
  try {
    step();
  } catch (e) {
    throw new Error(`${dataDirSetting(dataDir)} ${what}: ${(e as Error).message}`, { cause: e });
  }
}

/** Puts the lock in place unless one is there (false). */
function place(draft: string, path: string, mine: string): boolean {
  try {
    linkSync(draft, path);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return false;
    if (code !== "EPERM" && code !== "ENOTSUP" && code !== "EOPNOTSUPP" && code !== "ENOSYS") throw e;
  }
  // A filesystem without hard links: created exclusively, written at once.
  try {
    const fd = openSync(path, "wx");
    writeSync(fd, mine);
    closeSync(fd);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw e;
  }
}

/** How long a takeover's mark may stand before another process counts it as left by a crash mid-takeover. */
const TAKEOVER_MARK_STALE_MS = 5_000;

/**
 * Removes the stale lock (its text read as stale), under a mark only one process at a time
 * makes (a directory, created exclusively): under it no other process removes the lock, and
 * none can place one while a lock is there, so the lock read again under it is the one removed.
 * Moved aside and put back when it had changed, as before, three processes starting on one
 * stale lock could both hold it: one placed its own in the moment another's was aside. A
 * process that finds the mark made waits a moment and tries again (the caller's loop).
 */
function takeOverStale(path: string, stale: string): void {
  const mark = `${path}.takeover`;
  try {
    mkdirSync(mark);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    try {
      if (Date.now() - statSync(mark).mtimeMs > TAKEOVER_MARK_STALE_MS) rmdirSync(mark);
    } catch {} // removed meanwhile
    pause(10);
    return;
  }
  try {
    if (readFileSync(path, "utf8") === stale) unlinkSync(path);
  } catch {
    // gone already: released
  } finally {
    try {
      rmdirSync(mark);
    } catch {}
  }
}

/** Blocks this thread for ms (the lock is taken synchronously, at start). */
function pause(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function heldLock(path: string, mine: string): DataDirLock {
  let released = false;
  // Touched while held, for processes on other hosts (ownerRuns); a timer that keeps no process alive.
  const renew = setInterval(() => {
    try {
      const now = new Date();
      utimesSync(path, now, now);
    } catch {} // released, or the directory gone: nothing to renew
  }, RENEW_MS);
  (renew as { unref?: () => void }).unref?.();
  return {
    path,
    release() {
      if (released) return;
      released = true;
      clearInterval(renew);
      try {
        // Its own lock only: a process of another container may have the same pid.
        if (readFileSync(path, "utf8") === mine) unlinkSync(path);
      } catch {}
    },
  };
}

/**
 * Refuses a PGlite data directory that is not a directory, or that holds files but no
 * database (no PG_VERSION, only perhaps tern's lock): PGlite would create its cluster among
 * someone else's files. Missing is fine: it is created. Other tern data directories inside
 * it are not someone else's files (the shipped configs put ./data/cluster-a in ./data before
 * they took ./data-cluster-a).
 */
export function checkDataDir(dataDir: string): void {
  const what = dataDirSetting(dataDir);
  let entries: string[];
  try {
    entries = readdirSync(dataDir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return;
    if (code === "ENOTDIR") throw new Error(`${what} is not a directory`);
    throw new Error(`${what} cannot be read: ${(e as Error).message}`);
  }
  // A first start cut short (pglite-first-start.ts): tern's own half-made database, made again.
  if (entries.includes(FIRST_START_MARKER)) return;
  // tern.*: the lock, its drafts (acquireDataDirLock) and the first start's marker are tern's own.
  const others = entries.filter((f) => !f.startsWith("tern.") && !isDataDir(join(dataDir, f)));
  if (others.length && !others.includes("PG_VERSION")) {
    throw new Error(`${what} holds files but no database (no PG_VERSION): give an empty directory, or one tern created`);
  }
}

/** Whether path is a directory a tern server made its own (a database, or its lock). */
function isDataDir(path: string): boolean {
  try {
    const inside = readdirSync(path);
    return inside.includes("PG_VERSION") || inside.includes("tern.lock");
  } catch {
    return false;
  }
}
