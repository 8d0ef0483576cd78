-- A write's namespace barrier and check in one call, so a write can be one statement:
-- takes the namespace's HANDOVER barrier lock shared for the rest of the transaction (the
-- key of src/history/namespace-guard.ts), then checks that the namespace is still NORMAL,
-- at the failover version the write stamps and active in the writing cluster, failing with
-- division_by_zero (the guards' SQLSTATE) when not. Its check is a statement of the
-- function's own, so in READ COMMITTED its snapshot is taken after the lock is granted: a
-- failover that held the lock exclusively is seen, though the calling statement's snapshot
-- is older. PL/pgSQL keeps the check's plan per session.
CREATE FUNCTION "tern_namespace_still_writable"(ns_id text, at_version bigint, here text) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(hashtextextended(ns_id, 7233));
  RETURN 1 / (EXISTS (
    SELECT 1 FROM "namespaces" n
    WHERE n."id" = ns_id AND n."replication_state" = 'NORMAL'
      AND n."failover_version" = at_version AND n."active_cluster_name" = here
  ))::integer;
END
$$;
