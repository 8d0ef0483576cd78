import type { Sql } from "postgres";

/** One event as the passive side applied it: when it was written on the source and applied here (epoch ms). */
export interface ApplyStamp {
  eventTimeMs: number;
  appliedAtMs: number;
}

/**
 * Installs, in a cluster's own database, a side table and an AFTER INSERT trigger on
 * history_events that stamps every applied event with clock_timestamp(): the same
 * method as the logical-replication baseline's subscriber trigger. The stamp is taken
 * inside the apply transaction, so it is slightly before the commit makes it visible.
 */
export async function installApplyStamps(sql: Sql): Promise<void> {
  await sql.unsafe(`
    create table if not exists bench_applied (
      run_id text not null, event_id bigint not null, event_type text not null,
      event_time timestamptz not null, applied_at timestamptz not null);
    create or replace function bench_stamp_applied() returns trigger language plpgsql as $$
    begin
      insert into bench_applied values (new.run_id, new.event_id, new.event_type, new.event_time, clock_timestamp());
      return null;
    end $$;
    drop trigger if exists bench_stamp_applied on history_events;
    create trigger bench_stamp_applied after insert on history_events for each row execute function bench_stamp_applied();`);
}

/** Stamps of events applied in [fromMs, toMs), ordered by apply time. */
export async function readApplyStamps(sql: Sql, fromMs: number, toMs = Date.now() + 3_600_000): Promise<ApplyStamp[]> {
  const rows = await sql<{ e: number; a: number }[]>`
    select extract(epoch from event_time) * 1000 as e, extract(epoch from applied_at) * 1000 as a
    from bench_applied where applied_at >= ${new Date(fromMs)} and applied_at < ${new Date(toMs)} order by applied_at`;
  return rows.map((r) => ({ eventTimeMs: Number(r.e), appliedAtMs: Number(r.a) }));
}

/** A row's key and a time (epoch ms), as the commit-lag queries read them. */
export interface KeyedMs {
  k: string;
  ms: number | string | null;
}

/** applied − committed (ms) per key found in both; rows without a time (no commit timestamp kept) are left out. */
export function lagsByKey(committed: readonly KeyedMs[], applied: readonly KeyedMs[]): number[] {
  const at = new Map(committed.filter((r) => r.ms !== null).map((r) => [r.k, Number(r.ms)]));
  return applied.flatMap((r) => {
    const c = at.get(r.k);
    return c === undefined || r.ms === null ? [] : [Number(r.ms) - c];
  });
}

/**
 * Lags (ms) from each event's commit on the source (PostgreSQL's commit timestamp of the
 * row, so only with track_commit_timestamp=on there: undefined otherwise) to its apply
 * stamp here, for events written on the source in [fromMs, toMs).
 */
export async function commitLagsOfWrittenIn(source: Sql, here: Sql, fromMs: number, toMs: number): Promise<number[] | undefined> {
  const [setting] = await source<{ track_commit_timestamp: string }[]>`show track_commit_timestamp`;
  if (setting?.track_commit_timestamp !== "on") return undefined;
  const [from, to] = [new Date(fromMs), new Date(toMs)];
  const committed = await source<KeyedMs[]>`
    select run_id || '/' || event_id as k, extract(epoch from pg_xact_commit_timestamp(xmin)) * 1000 as ms
    from history_events where event_time >= ${from} and event_time < ${to}`;
  const applied = await here<KeyedMs[]>`
    select run_id || '/' || event_id as k, extract(epoch from applied_at) * 1000 as ms
    from bench_applied where event_time >= ${from} and event_time < ${to}`;
  return lagsByKey(committed, applied);
}

/** Lags (ms) of the events written on the source in [fromMs, toMs). */
export function lagsOfWrittenIn(stamps: readonly ApplyStamp[], fromMs: number, toMs: number): number[] {
  return stamps.filter((s) => s.eventTimeMs >= fromMs && s.eventTimeMs < toMs).map((s) => s.appliedAtMs - s.eventTimeMs);
}

/** How a backlog drained after replication resumed at `resumedAtMs`. */
export interface CatchUp {
  /** Resume → the apply after which every event applied had lag below the threshold; null if never. */
  seconds: number | null;
  /** Events applied from resume to that point, per second. */
  eventsPerSec: number;
  events: number;
}

/**
 * Catch-up from apply stamps (ascending by apply time): the end is the last apply with
 * lag >= thresholdMs; caught up only if later applies exist with lag below it (else null,
 * also while nothing was applied since the resume).
 */
export function catchUpFrom(stamps: readonly ApplyStamp[], resumedAtMs: number, thresholdMs = 1000): CatchUp {
  const after = stamps.filter((s) => s.appliedAtMs >= resumedAtMs);
  // Nothing applied since the resume yet: not caught up, whatever the backlog.
  if (after.length === 0) return { seconds: null, eventsPerSec: Number.NaN, events: 0 };
  let lastSlow = -1;
  after.forEach((s, i) => {
    if (s.appliedAtMs - s.eventTimeMs >= thresholdMs) lastSlow = i;
  });
  if (lastSlow === after.length - 1) return { seconds: null, eventsPerSec: Number.NaN, events: after.length };
  if (lastSlow < 0) return { seconds: 0, eventsPerSec: Number.NaN, events: 0 };
  const endMs = after[lastSlow]!.appliedAtMs;
  const seconds = (endMs - resumedAtMs) / 1000;
  const events = lastSlow + 1;
  return { seconds, events, eventsPerSec: seconds > 0 ? events / seconds : Number.NaN };
}

/** How long the backlog (events written before the resume) took to apply, and at what rate. */
export interface BacklogDrain {
  seconds: number;
  events: number;
  eventsPerSec: number;
}

/**
 * From apply stamps: the backlog is drained at the last apply of an event written before
 * `resumedAtMs`; the rate counts every apply from the resume to then (fresh events too,
 * they compete for the same apply path).
 */
export function backlogDrain(stamps: readonly ApplyStamp[], resumedAtMs: number): BacklogDrain | null {
  const after = stamps.filter((s) => s.appliedAtMs >= resumedAtMs);
  const end = after.reduce((m, s) => (s.eventTimeMs < resumedAtMs && s.appliedAtMs > m ? s.appliedAtMs : m), Number.NEGATIVE_INFINITY);
  if (!Number.isFinite(end)) return null;
  const events = after.filter((s) => s.appliedAtMs <= end).length;
  const seconds = (end - resumedAtMs) / 1000;
  return { seconds, events, eventsPerSec: seconds > 0 ? events / seconds : Number.NaN };
}
