import { PROCESS_START_WAIT_MS } from "../../scripts/lib/cluster-process";

/**
 * What a test file that starts servers (in process or as processes) gives its hooks and tests, by
 * setDefaultTimeout or a hook's own timeout: on a loaded 2-core host one PGlite start took over
 * 30 s (cleanup.test.ts), two started at once over 60 s (history-replication.test.ts), 2026-12-07.
 */
export const serverStartTimeout = 120_000;

/** How long a server process is awaited (its started line, /health 200) unless told: the demo's and runbook's cluster processes' wait. */
export const processStartWait = PROCESS_START_WAIT_MS;

/**
 * How late past its own bound (a forward timeout, a graceful failover's timeout) a call the
 * product bounds may answer on a loaded 2-core host: a failover bounded at 1 s answered after
 * 5.2 s (link-faults.test.ts, load ~26), 2026-12-07. A test of the bound expects the answer by
 * answeredWithin(bound): a call that waits out some other, longer wait (30 s) still fails it.
 */
export const loadedHostLag = 10_000;

/** The longest a call the product bounds at boundMs may take to answer on a loaded host. */
export const answeredWithin = (boundMs: number) => boundMs + loadedHostLag;
