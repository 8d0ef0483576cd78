/** A small Prometheus registry: counters, gauges and histograms with labels. */
export type Labels = Record<string, string>;

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

const LAG_BUCKETS = [0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60];

/** Histograms that need their own bounds: replication lag is judged at 50 ms, so it needs steps around it. */
const BUCKETS_OF: Record<string, number[]> = {
  replication_latency: LAG_BUCKETS,
  replication_fetch_latency: LAG_BUCKETS,
  replication_apply_latency: LAG_BUCKETS,
};

interface Series {
  labels: Labels;
  value: number;
  buckets?: number[];
  sum?: number;
}

interface Family {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  /** Upper bounds of a histogram's buckets. */
  buckets: number[];
  series: Map<string, Series>;
  /** Whether a series' value is unknown at the moment (not rendered). */
  unknown?: (labels: Labels) => boolean;
  /** The series as they stand, read at each render in place of those set (collect). */
  read?: () => Series[];
}

/** Metrics registry; render() is the /metrics body. */
export interface Metrics {
  inc(name: string, labels?: Labels, by?: number): void;
  set(name: string, labels: Labels, value: number): void;
  observe(name: string, labels: Labels, seconds: number): void;
  /** Drops name's series whose labels include all of labels: a gauge of something gone (a removed remote) is no longer shown. */
  remove(name: string, labels: Labels): void;
  /**
   * Leaves name's series out of render() while unknown(labels) holds, and shows them again with
   * what was last set once it does not: a gauge of a remote not heard from claims no value.
   */
  unknownWhile(name: string, unknown: (labels: Labels) => boolean): void;
  /** name's series are read() at each render, not set: a gauge of state kept elsewhere (a remote's connection). */
  collect(name: string, read: () => { labels: Labels; value: number }[]): void;
  render(): string;
}

const HELP: Record<string, [Family["type"], string]> = {
  service_requests: ["counter", "RPC requests received by the frontend"],
  service_errors: ["counter", "RPC requests that failed"],
  service_latency: ["histogram", "RPC latency in seconds"],
  client_redirection_requests: ["counter", "Calls forwarded to the active cluster of their namespace (dcRedirectionPolicy), by operation, namespace and target_cluster: each cluster a call is sent to"],
  client_redirection_errors: ["counter", "Forwarded calls that failed, by error_type: timeout (no answer by the caller's deadline or the forward timeout; a history long poll's caller still gets its empty page), unreachable (no answer at all: a connection refused or reset), canceled (the caller left), else the code the target answered (not_found, ...)"],
  client_redirection_latency: ["histogram", "Seconds a forwarded call waited for the active cluster's answer or its failure"],
  persistence_requests: ["counter", "Persistence write transactions, each attempt, by operation (reads are not counted)"],
  history_writes: ["counter", "Client writes of workflow runs (starts and appends), by path: one-trip (a start of an id without runs, an append from the run's row kept in memory) or read-first (the current run read under its lock)"],
  persistence_errors: ["counter", "Persistence write transactions that failed"],
  persistence_latency: ["histogram", "Persistence write transaction latency in seconds, each attempt"],
  workflow_success: ["counter", "Workflow runs completed"],
  workflow_failed: ["counter", "Workflow runs failed"],
  workflow_timeout: ["counter", "Workflow runs timed out"],
  timer_fire_failed: ["counter", "Timer fires that failed for the timer's own reason (the timer stays due; later timers still fire)"],
  workflow_terminate: ["counter", "Workflow runs terminated"],
  workflow_cancel: ["counter", "Workflow cancel requests"],
  replication_latency: ["histogram", "Seconds from a history write's commit on the source to its apply here (tasks applied, not those sent to the DLQ)"],
  replication_fetch_latency: ["histogram", "Seconds from a history write on the source to its page arriving here: the source's commit and answer, and the network"],
  replication_apply_latency: ["histogram", "Seconds from a history page arriving here to its apply: the wait for the apply before it, then its own"],
  replication_tasks_lag: ["gauge", "History replication tasks of a remote shard not yet applied here; absent while the remote's connection is disabled, its stream's call failed since it last answered, or it has not been heard from within its long-poll wait and 2 s (its inbound lag unknown in replication status)"],
  replication_lag_seconds: ["gauge", "Seconds the oldest history replication task of a remote not yet applied here has waited since its commit there, the longest of its shards (0 with none waiting): replication status's inbound LAG (MS), in seconds; absent while replication_tasks_lag is"],
  replication_outbound_tasks_lag: ["gauge", "History replication tasks of a shard here that a remote cluster has not acked yet (kept for it); set by the task cleanup, every 10 s"],
  replication_streams_served: ["gauge", "StreamReplicationTasks calls this cluster is serving, per pulling peer"],
  replication_stream_received_tasks: ["gauge", "History replication tasks read from a remote's stream and not applied yet: its reader stops reading while a shard page's worth waits"],
  replication_tasks_applied: ["counter", "History replication tasks applied from a remote cluster"],
  replication_pages_applied: ["counter", "History replication pages applied, by path: one-trip (from rows kept in memory), pipelined (two round trips) or full (conflicts, gaps, held runs)"],
  replication_page_bytes_read: ["counter", "Bytes of history events this cluster's replication page reads rendered from its database, sent or not"],
  replication_pages_sent: ["counter", "History replication pages sent to a pulling peer, by source: memory (the outbox tail) or database"],
  namespace_replication_task_ack_level: ["gauge", "Namespace replication task applied here, per remote cluster"],
  replication_tasks_failed: ["counter", "History replication task apply attempts that failed, for any reason (this database, the task itself); each is retried, and a task failing for its own reason goes to the DLQ after 5"],
  replication_dlq_size: ["gauge", "History replication tasks in this cluster's DLQ, per source cluster"],
  replication_connection_state: ["gauge", "1 for the state of this cluster's connection to a remote cluster (connected, connecting, error, disabled, unknown: its streams restarting), as the CONNECTION column of replication status; 0 for the other states, so exactly one is 1"],
  process_event_loop_delay_seconds: ["histogram", "Seconds a timer of this process fired past its due time, sampled every 100 ms: how long work arriving here waited for the event loop"],
};

const key = (labels: Labels) =>
  Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`)
    .join(",");

const escape = (v: string) => v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
const fmt = (labels: Labels, extra: Labels = {}) => {
  const all = { ...labels, ...extra };
  const parts = Object.keys(all).map((k) => `${k}="${escape(all[k]!)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
};

/** Creates an empty registry; families of the seed names are pre-declared. */
export function createMetrics(): Metrics {
  const families = new Map<string, Family>();
  const family = (name: string, type: Family["type"]): Family => {
    let f = families.get(name);
    if (!f) {
      f = { name, type: HELP[name]?.[0] ?? type, help: HELP[name]?.[1] ?? name, buckets: BUCKETS_OF[name] ?? BUCKETS, series: new Map() };
      families.set(name, f);
    }
    return f;
  };
  for (const [name, [type]] of Object.entries(HELP)) family(name, type);
  const series = (f: Family, labels: Labels) => {
    const k = key(labels);
    let s = f.series.get(k);
    if (!s) {
      s = { labels, value: 0 };
      if (f.type === "histogram") Object.assign(s, { buckets: f.buckets.map(() => 0), sum: 0 });
      f.series.set(k, s);
    }
    return s;
  };
  return {
    inc(name, labels = {}, by = 1) {
      series(family(name, "counter"), labels).value += by;
    },
    set(name, labels, value) {
      series(family(name, "gauge"), labels).value = value;
    },
    observe(name, labels, seconds) {
      const f = family(name, "histogram");
      const s = series(f, labels);
      s.value += 1;
      s.sum! += seconds;
      f.buckets.forEach((b, i) => {
        if (seconds <= b) s.buckets![i]! += 1;
      });
    },
    remove(name, labels) {
      const f = families.get(name);
      if (!f) return;
      for (const [k, s] of f.series) if (Object.entries(labels).every(([l, v]) => s.labels[l] === v)) f.series.delete(k);
    },
    unknownWhile(name, unknown) {
      family(name, "gauge").unknown = unknown;
    },
    collect(name, read) {
      family(name, "gauge").read = read;
    },
    render() {
      const out: string[] = [];
      for (const f of families.values()) {
        out.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`);
        for (const s of f.read?.() ?? f.series.values()) {
          if (f.unknown?.(s.labels)) continue;
          if (f.type !== "histogram") {
            out.push(`${f.name}${fmt(s.labels)} ${s.value}`);
            continue;
          }
          f.buckets.forEach((b, i) => out.push(`${f.name}_bucket${fmt(s.labels, { le: String(b) })} ${s.buckets![i]}`));
          out.push(`${f.name}_bucket${fmt(s.labels, { le: "+Inf" })} ${s.value}`);
          out.push(`${f.name}_sum${fmt(s.labels)} ${s.sum}`, `${f.name}_count${fmt(s.labels)} ${s.value}`);
        }
      }
      return out.join("\n") + "\n";
    },
  };
}
