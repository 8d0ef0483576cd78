import { chmodSync, chownSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./free-port";

/** Where PostgreSQL's server binaries are (initdb, pg_ctl): Debian's PostgreSQL 15, as STACK.md sets it up. */
export const POSTGRES_BIN = "/usr/lib/postgresql/15/bin";

/** A PostgreSQL instance started for one bench run. */
export interface PrivatePostgres {
  url: (db: string) => string;
  /** Ends the instance as a crash would (`pg_ctl stop -m immediate`: no checkpoint, no flush); `start` brings it back on the same data. */
  crash(): Promise<void>;
  /** Starts the instance again after `crash`, on the same port and data: it recovers from its WAL. */
  start(): Promise<void>;
  /** Restarts the instance as an operator would (`pg_ctl restart -m fast`): its sessions are ended, and it is back when this resolves. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

async function sh(cmd: string): Promise<string> {
  const p = Bun.spawn(["su", "postgres", "-s", "/bin/sh", "-c", cmd], { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`${cmd}: exit ${code}\n${err || out}`);
  return out;
}

/**
 * initdb + pg_ctl start as user postgres in a temp dir, on a free port (STACK.md), with
 * wal_level=logical and track_commit_timestamp=on (each row's commit time, for lag measured
 * from the commit). `settings` are more `-c name=value` pairs (e.g. a test's wal_writer_delay).
 */
export async function startPrivatePostgres(settings: Record<string, string | number> = {}): Promise<PrivatePostgres> {
  const dir = mkdtempSync(join(tmpdir(), "tern-bench-pg-"));
  const pw = Number((await Bun.$`id -u postgres`.text()).trim());
  chownSync(dir, pw, pw);
  chmodSync(dir, 0o700);
  const port = await freePort();
  let started = false;
  const halt = () => sh(`${POSTGRES_BIN}/pg_ctl -D ${dir}/data -m immediate -w stop`);
  const stop = async () => {
    if (started) await halt().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  };
  const more = Object.entries(settings).map(([k, v]) => ` -c ${k}=${v}`).join("");
  const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10 -c shared_buffers=128MB -c track_commit_timestamp=on${more}`;
  const start = (how = "start") => sh(`${POSTGRES_BIN}/pg_ctl -D ${dir}/data -l ${dir}/log -o '${opts}' -m fast -w ${how} >/dev/null`);
  try {
    await sh(`${POSTGRES_BIN}/initdb -D ${dir}/data --auth=trust -U postgres >/dev/null`);
    started = true;
    await start();
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    url: (db) => `postgres://postgres@127.0.0.1:${port}/${db}`,
    crash: async () => void (await halt()),
    start: async () => void (await start()),
    restart: async () => void (await start("restart")),
    stop,
  };
}
