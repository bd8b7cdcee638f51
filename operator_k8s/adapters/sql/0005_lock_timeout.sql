-- A call the operator gave up on must not stay behind on the server: at its deadline the operator closes the
-- connection (a cancel request crashed PgBouncer 1.18), and Postgres does not notice a closed connection while a
-- statement waits for a lock, so such statements piled up until the connection limit. The sync now runs with a
-- lock_timeout inside the client's deadline: a lock held by someone else (a long ALTER, VACUUM FULL, an admin's open
-- transaction) ends the call on the server with lock_not_available (55P03), which the operator retries.
CREATE FUNCTION sync_cluster_within(p_cluster_uid text, p_writes jsonb, p_horizon timestamptz, p_lock_timeout_ms integer)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lock_timeout', greatest(p_lock_timeout_ms, 1)::text || 'ms', true);
    RETURN sync_cluster_cas(p_cluster_uid, p_writes, p_horizon);
END;
$$;
