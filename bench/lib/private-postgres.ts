import { chmodSync, chownSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./free-port";

const BIN = "/usr/lib/postgresql/15/bin";

/** A PostgreSQL instance started for one bench run. */
export interface PrivatePostgres {
  url: (db: string) => string;
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
 * from the commit).
 */
export async function startPrivatePostgres(): Promise<PrivatePostgres> {
  const dir = mkdtempSync(join(tmpdir(), "tern-bench-pg-"));
  const pw = Number((await Bun.$`id -u postgres`.text()).trim());
  chownSync(dir, pw, pw);
  chmodSync(dir, 0o700);
  const port = await freePort();
  let started = false;
  const stop = async () => {
    if (started) await sh(`${BIN}/pg_ctl -D ${dir}/data -m immediate -w stop`).catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await sh(`${BIN}/initdb -D ${dir}/data --auth=trust -U postgres >/dev/null`);
    const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10 -c shared_buffers=128MB -c track_commit_timestamp=on`;
    started = true;
    await sh(`${BIN}/pg_ctl -D ${dir}/data -l ${dir}/log -o '${opts}' -w start >/dev/null`);
  } catch (e) {
    await stop();
    throw e;
  }
  return { url: (db) => `postgres://postgres@127.0.0.1:${port}/${db}`, stop };
}
